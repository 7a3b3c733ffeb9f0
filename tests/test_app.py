"""The wiring of `vodflow serve` (orchestrator/app.py): /healthz, over real HTTP and a real
database that goes away and comes back."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest

from orchestrator.store import db as db_module
from tests.conftest import PG_ADMIN_URL
from tests.fakevod import new_file_upload
from tests.harness import TIMES_OUT, running_service
from tests.servers import TcpProxy

pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.mark.pg
async def test_healthz_keeps_the_drivers_reason_for_the_log_once_per_change(
    tmp_path: Path, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # PostgreSQL behind a forwarder the test can take away: the driver's real error then names
    # the host, the port and the user, which /healthz used to answer to anyone.
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    assert "@127.0.0.1:5432/" in PG_ADMIN_URL
    url = pg_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
    try:
        async with running_service(tmp_path, url, {"times-out": TIMES_OUT}) as service:
            health = f"{service.base}/healthz"
            assert (await service.http.get(health)).status_code == 200
            caplog.set_level(logging.INFO, logger="vodflow")
            proxy.stop()
            for _ in range(3):
                answer = await service.http.get(health)
                assert answer.status_code == 503
                assert answer.json() == {
                    "status": "unavailable",
                    "database": "not answering (the log has the reason)",
                }
            proxy.start()

            async def answers() -> httpx.Response | None:
                answer = await service.http.get(health)
                return answer if answer.status_code == 200 else None

            await service.wait(answers)
            assert (await service.http.get(health)).status_code == 200
        said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("/healthz")]
        assert len(said) == 2, said
        assert said[0].startswith("/healthz: the database postgresql://postgres@127.0.0.1:")
        assert f"{proxy.port}/test" in said[0]
        assert "does not answer: " in said[0]
        assert said[1].endswith("answers again")
    finally:
        proxy.stop()


@pytest.mark.pg
async def test_requests_the_database_cannot_answer_are_503_in_the_apis_shape(
    tmp_path: Path, pg_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the database gone, the API, the CLI's requests and VOD's callbacks get a 503 that
    says so (VOD retries its callbacks), not a plain "Internal Server Error"; the log says why
    once, not with a traceback per request."""
    monkeypatch.setattr(db_module, "_said_at", {})
    proxy = TcpProxy(("127.0.0.1", 5432))
    proxy.start()
    url = pg_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
    try:
        async with running_service(tmp_path, url, {"times-out": TIMES_OUT}) as service:
            assert (await service.http.get(f"{service.base}/api/runs")).status_code == 200
            metrics = f"{service.base}/metrics"
            assert "\nvodflow_database_up 1.0\n" in (await service.http.get(metrics)).text
            caplog.set_level(logging.INFO)
            proxy.stop()
            # A scrape still answers, and says the database does not (the other gauges keep
            # their last values).
            scraped = await service.http.get(metrics)
            assert scraped.status_code == 200
            assert "\nvodflow_database_up 0.0\n" in scraped.text
            answers = [
                await service.http.get(f"{service.base}/api/runs"),
                await service.http.get(f"{service.base}/api/stats"),
                await service.callback(new_file_upload("f1")),
            ]
            for answer in answers:
                assert answer.status_code == 503, answer.text
                assert answer.headers["retry-after"] == "5"
                assert answer.json() == {
                    "error": "the database does not answer (the server's log says why); "
                    "nothing was done",
                    "status": 503,
                }
            proxy.start()
        said = [r for r in caplog.records if r.getMessage().startswith("answering requests")]
        assert len(said) == 1
        assert "the database does not answer (" in said[0].getMessage()
        assert not [r for r in caplog.records if r.exc_info and "uvicorn" in r.name]
    finally:
        proxy.stop()
