"""The shared VOD quota: exact in any sliding window, paced, shared by processes, and
told off by VOD's frequency-limit answer."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.store import migrate
from orchestrator.store.db import Database
from orchestrator.vod.limiter import Limiter, Quota, decide
from tests.conftest import ROOT


def max_in_window(stamps: list[float], window: float) -> int:
    stamps = sorted(stamps)
    best, start = 0, 0
    for end, t in enumerate(stamps):
        while stamps[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


@given(
    attempts=st.lists(st.floats(0, 0.5, allow_nan=False), min_size=1, max_size=400),
    rate=st.integers(1, 30),
    burst=st.integers(1, 30),
)
def test_decide_never_exceeds_the_quota_in_any_window(
    attempts: list[float], rate: int, burst: int
) -> None:
    quota = Quota(rate=rate, burst=min(burst, rate), window=1.0)
    now, calls, made = 0.0, [], []
    for gap in attempts:
        now += gap
        calls, wait = decide(calls, 0.0, now, quota)
        if wait is None:
            made.append(now)
        else:
            assert wait > 0
    assert max_in_window(made, quota.window) <= quota.rate
    span = quota.burst * quota.window / quota.rate
    assert max_in_window(made, span) <= quota.burst


def test_decide_waits_exactly_until_a_slot_frees() -> None:
    quota = Quota(rate=3, burst=3, window=10)
    calls: list[float] = []
    for t in (0.0, 1.0, 2.0):
        calls, wait = decide(calls, 0.0, t, quota)
        assert wait is None
    calls, wait = decide(calls, 0.0, 5.0, quota)
    assert wait == pytest.approx(5.0)
    calls, wait = decide(calls, 0.0, 10.5, quota)
    assert wait is None
    _, wait = decide(calls, 20.0, 11.0, quota)
    assert wait == pytest.approx(9.0)


async def test_penalize_blocks_everyone(db: Database) -> None:
    clock = [1000.0]
    limiter = Limiter(db, "AKID", {}, Quota(rate=100, burst=10), clock=lambda: clock[0])
    assert (await limiter.try_acquire("ProcessFileByProcedure")).at == 1000.0
    assert await limiter.penalize("ProcessFileByProcedure", 30) == 30
    other = Limiter(db, "AKID", {}, Quota(rate=100, burst=10), clock=lambda: clock[0])
    blocked = await other.try_acquire("ProcessFileByProcedure")
    assert blocked.at is None
    assert blocked.wait == pytest.approx(30)
    assert (await other.try_acquire("PullEvent")).at is not None  # each action has its quota
    clock[0] += 31
    assert (await other.try_acquire("ProcessFileByProcedure")).at == 1031.0
    assert await other.usage("ProcessFileByProcedure") == 2


@pytest.mark.slow
def test_two_processes_together_never_exceed_the_quota(database_url: str, tmp_path: Path) -> None:
    migrate.upgrade(database_url)
    start = time.time() + 4.0  # after both processes have imported and connected
    worker = [sys.executable, str(ROOT / "tests" / "limiter_worker.py"), database_url]
    outs = [tmp_path / f"p{i}.txt" for i in range(2)]
    procs = [
        subprocess.Popen([*worker, str(start), str(start + 5.0), str(out)], cwd=ROOT)
        for out in outs
    ]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    per_process = [[float(x) for x in out.read_text().split()] for out in outs]
    stamps = [t for p in per_process for t in p]
    assert all(len(p) > 5 for p in per_process), "both processes got calls through"
    assert max_in_window(stamps, 2.0) <= 20
    assert max_in_window(stamps, 0.5) <= 5
    # and the quota is used, not starved: about 20 per 2 s over 5 s
    assert len(stamps) >= 40
