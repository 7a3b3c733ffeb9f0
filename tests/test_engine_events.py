"""The engine's events: pushed to the callback URL and resent with backoff until it answers 2xx,
and pulled with PullEvent (long poll) until confirmed with ConfirmEvent."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from orchestrator.config import Settings
from orchestrator.engine import create_engine_app
from orchestrator.engine.callbacks import backoff
from orchestrator.engine.ffmpeg import FFmpeg
from orchestrator.engine.media import Media
from orchestrator.engine.upload import upload_file
from orchestrator.keys import load_keys
from orchestrator.store import engine as store
from orchestrator.store import migrate
from orchestrator.vod.events import parse_event, parse_pull_event_response
from tests.conftest import free_port
from tests.engine_support import Receiver, engine_client, running_engine
from tests.servers import serving

pytestmark = [pytest.mark.ffmpeg, pytest.mark.usefixtures("clean_env")]


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("events") / "short.mp4"
    asyncio.run(Media(FFmpeg(threads=2)).make_test_media(path, 2, width=160, height=90))
    return path


def test_backoff_doubles_up_to_its_ceiling() -> None:
    assert [backoff(n, 2.0, 30.0) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]


async def test_a_failing_callback_url_gets_the_event_again_until_it_answers_2xx(
    database_url: str, tmp_path: Path, recording: Path
) -> None:
    receiver = Receiver(fail_first=2)
    async with running_engine(database_url, tmp_path, receiver=receiver) as vod:
        started = time.monotonic()
        uploaded = await vod.upload(recording)
        body = await receiver.wait_for(lambda b: b["eventType"] == "NewFileUpload")
        elapsed = time.monotonic() - started
        event = parse_event(body)
        assert (event.kind, event.file_id) == ("NewFileUpload", uploaded.file_id)
        assert receiver.attempts == 3
        assert elapsed >= 0.5  # waited 0.2 s, then 0.4 s (engine_callback_backoff 0.2)
        async with asyncio.timeout(5):  # the sender records the answer just after it
            while True:
                async with vod.db.read() as conn:
                    (row,) = await store.task_events(conn, uploaded.file_id)
                if row.push_status != "pending":
                    break
                await asyncio.sleep(0.05)
        assert (row.push_status, row.push_attempts) == ("delivered", 3)
        assert row.push_error is not None
        assert row.push_error.startswith("HTTP 500")  # the last failure is kept


async def test_a_quiesced_engine_starts_no_send_and_keeps_its_events_pending(
    sqlite_url: str, tmp_path: Path, recording: Path
) -> None:
    """What a stopping server asks of its engine: its receiver is about to stop listening, so
    an event sent now would fail and count an attempt; it waits for the next start instead."""
    receiver = Receiver()
    async with running_engine(sqlite_url, tmp_path, receiver=receiver) as vod:
        vod.engine.quiesce()
        uploaded = await vod.upload(recording)
        await asyncio.sleep(1.5)  # the sender looks at least once a second
        async with vod.db.read() as conn:
            (row,) = await store.task_events(conn, uploaded.file_id)
    assert receiver.attempts == 0
    assert (row.push_status, row.push_attempts, row.push_error) == ("pending", 0, None)


async def test_pull_event_long_polls_and_confirm_event_acknowledges(
    database_url: str, tmp_path: Path, recording: Path
) -> None:
    async with running_engine(
        database_url, tmp_path, engine_pull_wait=3.0, engine_event_visibility=1.0
    ) as vod:
        assert not vod.engine.callback_url  # pull only: nothing is pushed

        # A PullEvent waiting when the event is made answers at once with it.
        started = time.monotonic()
        pulling = asyncio.create_task(vod.client.pull_event())
        await asyncio.sleep(0.3)
        uploaded = await vod.upload(recording)
        answer = await pulling
        assert time.monotonic() - started < 2.5
        ((handle, event),) = parse_pull_event_response(
            answer.model_dump(mode="json", by_alias=True)
        )
        assert (event.kind, event.file_id, event.source) == (
            "NewFileUpload",
            uploaded.file_id,
            "pull",
        )
        assert len(handle) == 15
        assert handle.isdigit()

        # Not confirmed: it is handed out again once its visibility time has passed.
        again = await vod.client.pull_event()
        assert [e.msg_handle for e in again.event_list] == [handle]

        # Confirmed (numbered from 1, as Tencent's documentation does): gone for good.
        confirmed = await vod.call("ConfirmEvent", {"msgHandle.1": handle}, method="POST")
        assert confirmed == {"code": 0, "message": "", "codeDesc": "Success"}
        nothing = await vod.call("PullVodEvent", {})
        assert (nothing["code"], nothing["message"]) == (4000, "no event to pull (waited 3s)")


async def test_confirm_event_numbered_from_zero_and_unknown_handles(
    sqlite_url: str, tmp_path: Path, recording: Path
) -> None:
    async with running_engine(sqlite_url, tmp_path, engine_pull_wait=0.5) as vod:
        for _ in range(2):
            await vod.upload(recording)
        pulled = await vod.client.pull_event()
        handles = [e.msg_handle for e in pulled.event_list]
        assert len(handles) == 2
        await vod.client.confirm_event([*handles, "999999999999999"])
        assert (await vod.client.pull_event()).event_list == ()


async def test_the_engine_alone_pushes_nothing_without_a_callback_url_and_says_so(
    sqlite_url: str, tmp_path: Path, recording: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `vodflow engine serve` with VODFLOW_ENGINE_CALLBACK_URL unset: it has no receiver of its
    # own, so its events wait for PullEvent instead of going to its own /callbacks/vod (404).
    migrate.upgrade(sqlite_url)
    port = free_port()
    settings = Settings(data_dir=tmp_path / "data", database_url=sqlite_url, port=port)
    app = create_engine_app(settings)
    with caplog.at_level(logging.INFO):
        async with serving(app, port) as base:
            keys = load_keys(settings)
            uploaded = await upload_file(
                recording,
                endpoint=f"{base}/v2/index.php",
                secret_id=keys.vod_secret_id,
                secret_key=keys.vod_secret_key,
            )
            async with engine_client(base, keys) as client:
                pulled = await client.pull_event()
            ((_, event),) = parse_pull_event_response(pulled)
            assert (event.kind, event.file_id) == ("NewFileUpload", uploaded.file_id)
            async with app.state.engine.db.read() as conn:
                (row,) = await store.task_events(conn, uploaded.file_id)
            assert row.push_status == "off"
    hints = [
        r.getMessage() for r in caplog.records if "VODFLOW_ENGINE_CALLBACK_URL" in r.getMessage()
    ]
    assert len(hints) == 1
    assert "set it to the orchestrator's callback URL" in hints[0]
    assert not [r for r in caplog.records if r.name == "orchestrator.engine.callbacks"]
