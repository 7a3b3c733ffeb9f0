"""A process calling as fast as the shared limiter lets it (for tests/test_vod_limiter.py)."""

from __future__ import annotations

import asyncio
import sys
import time

from orchestrator.store.db import Database
from orchestrator.vod.limiter import Limiter, Quota


async def main(url: str, start: float, until: float) -> list[float]:
    db = Database(url)
    limiter = Limiter(db, "AKIDtest", {}, Quota(rate=20, burst=5, window=2.0))
    stamps = []
    await asyncio.sleep(max(0.0, start - time.time()))  # both processes begin together
    while time.time() < until:
        grant = await limiter.acquire("ProcessFileByProcedure")
        assert grant.at is not None
        stamps.append(grant.at)
    await db.close()
    return stamps


if __name__ == "__main__":
    stamps = asyncio.run(main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3])))
    with open(sys.argv[4], "w") as fh:
        fh.write("\n".join(f"{t:.6f}" for t in stamps))
