"""A small HTTP/1.1 load generator on raw asyncio sockets (keep-alive, one request in flight per
connection), shared by the benchmarks so every server is measured with the same client.

Closed loop (``rate=None``): each connection sends its next request as soon as the previous answer
arrives, which finds the maximum rate. Open loop (``rate=R``): requests are started on a fixed
schedule of R per second regardless of answers, which measures latency at a given load without
coordinated omission (a late answer does not delay the next send's timestamp).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class Result:
    sent: int
    seconds: float
    latencies: list[float]
    statuses: dict[int, int]
    cpu: str = ""
    """Where the CPU went during the run, when the caller measured it (see bench/ingest.py)."""

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    def summary(self) -> str:
        return (
            f"{self.rate:8.0f} req/s  p50 {self.percentile(50) * 1000:6.2f} ms  "
            f"p99 {self.percentile(99) * 1000:6.2f} ms  "
            f"statuses {dict(sorted(self.statuses.items()))}"
            + (f"  [{self.cpu}]" if self.cpu else "")
        )


def request_bytes(host: str, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return status


async def run(
    host: str,
    port: int,
    path: str,
    bodies: Sequence[bytes],
    *,
    connections: int = 64,
    rate: float | None = None,
) -> Result:
    """Send every body once; returns throughput, latencies and status counts."""
    queue: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    address = f"{host}:{port}"

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                try:
                    body, scheduled = queue.get_nowait() if rate is None else await queue.get()
                except asyncio.QueueEmpty:
                    return
                if body == b"":
                    return
                writer.write(request_bytes(address, path, body))
                status = await _read_response(reader)
                latencies.append(time.perf_counter() - scheduled)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    start = time.perf_counter()
    if rate is None:
        for body in bodies:
            queue.put_nowait((body, 0.0))

        # closed loop: latency counts from the send, which is "now" at take time
        async def closed_worker() -> None:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                while not queue.empty():
                    body, _ = queue.get_nowait()
                    sent = time.perf_counter()
                    writer.write(request_bytes(address, path, body))
                    status = await _read_response(reader)
                    latencies.append(time.perf_counter() - sent)
                    statuses[status] = statuses.get(status, 0) + 1
            finally:
                writer.close()

        await asyncio.gather(*(closed_worker() for _ in range(connections)))
    else:
        workers = [asyncio.create_task(worker()) for _ in range(connections)]
        interval = 1.0 / rate
        for i, body in enumerate(bodies):
            target = start + i * interval
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait((body, target))
        for _ in workers:
            queue.put_nowait((b"", 0.0))
        await asyncio.gather(*workers)
    seconds = time.perf_counter() - start
    return Result(len(bodies), seconds, latencies, statuses)
