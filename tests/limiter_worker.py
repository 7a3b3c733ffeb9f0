"""A process that calls as fast as the shared limiter lets it (used by tests/test_vod_limiter.py)."""

from __future__ import annotations

import asyncio
import sys
import time

from orchestrator.store.db import Database
from orchestrator.vod.limiter import Limiter, Quota


async def main(url: str, until: float, out: str) -> None:
    db = Database(url)
    limiter = Limiter(db, "AKIDtest", {}, Quota(rate=20, burst=5, window=2.0))
    stamps = []
    while time.time() < until:
        grant = await limiter.acquire("ProcessFileByProcedure")
        assert grant.at is not None
        stamps.append(grant.at)
    await db.close()
    with open(out, "w") as fh:
        fh.write("\n".join(f"{t:.6f}" for t in stamps))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), sys.argv[3]))
