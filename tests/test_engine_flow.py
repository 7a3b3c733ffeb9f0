"""The engine end to end with real FFmpeg: uploads, procedures on files and on gen.clip/gen.concat,
the outputs served over HTTP, each event delivered to a callback URL and read by vodflow's own
parser, the task queries' answers matching the events, failures, and a restart mid-task.

Recordings are short and small (made once per session); durations are checked to FFmpeg's
10 ms plus a few frames, since stream-copied clips end on whole packets.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.engine.ffmpeg import FFmpeg, MediaInfo
from orchestrator.engine.media import Media, TranscodeTemplate
from orchestrator.engine.tasks import owner_name
from orchestrator.store import engine as store
from orchestrator.verify import check_cues, image_size, parse_vtt
from orchestrator.vod.errors import ErrorClass
from orchestrator.vod.events import VodEvent, event_from_task_info, parse_event
from tests.engine_support import Receiver, Recordings, Vod, make_recordings, running_engine

pytestmark = [pytest.mark.ffmpeg, pytest.mark.usefixtures("clean_env")]

SLACK = 0.15  # FFmpeg's 10 ms, plus the few frames a stream copy keeps past its end
T0 = 1_763_632_800  # a recording start time (Unix seconds)


@pytest.fixture(scope="session")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Recordings:
    return asyncio.run(make_recordings(tmp_path_factory.mktemp("engine-recordings")))


@pytest.fixture
def quick_sprites(tmp_path: Path) -> Path:
    """The built-in procedures plus QuickSprites: a 3x3 grid of 64x36 thumbnails every 2 s."""
    built_in = Path(__file__).parents[1] / "orchestrator" / "engine" / "procedures.yaml"
    text = built_in.read_text().replace(
        "imageSpriteTemplates:\n",
        "imageSpriteTemplates:\n  2: {interval: 2, rows: 3, columns: 3, width: 64, height: 36}\n",
    )
    path = tmp_path / "procedures.yaml"
    path.write_text(text + "  QuickSprites:\n    imageSprite: [2]\n")
    return path


async def fetch(vod: Vod, url: str, content_type: str) -> httpx.Response:
    answer = await vod.http.get(url)
    assert answer.status_code == 200, f"{url}: {answer.status_code}"
    assert answer.headers["content-type"] == content_type, url
    return answer


async def probe_url(vod: Vod, url: str, folder: Path) -> MediaInfo:
    """Download ``url`` (an HLS playlist with its segments) and probe it."""
    name = url.rsplit("/", 1)[-1]
    files = {name: (await vod.http.get(url)).content}
    if url.endswith(".m3u8"):
        playlist = await fetch(vod, url, "application/vnd.apple.mpegurl")
        for line in playlist.text.splitlines():
            if line and not line.startswith("#"):
                segment = await fetch(vod, url.rsplit("/", 1)[0] + "/" + line, "video/mp2t")
                files[line] = segment.content
    await asyncio.to_thread(_write_all, folder, files)
    return await Media(FFmpeg(threads=2)).probe(folder / name)


def _write_all(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)


async def same_as_callback(vod: Vod, body: dict[str, Any]) -> VodEvent:
    """The callback ``body`` parsed, after checking GetTaskInfo answers exactly its data."""
    event = parse_event(body, source="vod")
    assert event.task_id is not None
    info = await vod.client.get_task_info(event.task_id)
    assert info.status == "FINISH"
    assert info.data == body["data"]
    queried = event_from_task_info(info)
    assert (queried.kind, queried.success, queried.dedup_key) == (
        event.kind,
        event.success,
        event.dedup_key,
    )
    return event


# --- procedures on a file -----------------------------------------------------------------------


async def test_transcode_and_sprite_of_an_upload(
    database_url: str, tmp_path: Path, recordings: Recordings
) -> None:
    receiver = Receiver()
    async with running_engine(database_url, tmp_path / "vod", receiver=receiver) as vod:
        uploaded = await vod.upload(recordings.six)
        announced = parse_event(
            await receiver.wait_for(lambda b: b["eventType"] == "NewFileUpload")
        )
        assert (announced.kind, announced.file_id) == ("NewFileUpload", uploaded.file_id)
        assert announced.source_type == "ServerUpload"
        assert announced.outputs.files[0].url == uploaded.file_url
        assert len(uploaded.file_id) == 19
        assert uploaded.file_id.isdigit()

        answer = await vod.process({"fileId": uploaded.file_id, "procedure": "TranscodeAndSprite"})
        ids = {task.kind: task.task_id for task in answer.tasks}
        done = await receiver.wait_for(lambda b: b["eventType"] == "ProcedureStateChanged")

        transcode = await same_as_callback(vod, await receiver.task_done(ids["transcode"]))
        assert (transcode.success, transcode.file_id) == (True, uploaded.file_id)
        (play,) = transcode.outputs.play
        # Definition 20 fits 854x480; a 320x180 recording is never upscaled.
        assert (play.definition, play.width, play.height) == (20, 320, 180)
        assert play.duration == pytest.approx(6.0, abs=SLACK)
        out = await probe_url(vod, play.url, tmp_path / "out")
        assert out.duration == pytest.approx(6.0, abs=SLACK)
        assert out.video is not None
        assert out.audio is not None
        assert (out.video.codec, out.video.width, out.video.height) == ("h264", 320, 180)
        assert out.audio.codec == "aac"
        head = await vod.http.head(play.url)
        assert head.headers["content-type"] == "video/mp4"
        part = await vod.http.get(play.url, headers={"Range": "bytes=0-99"})
        assert (part.status_code, len(part.content)) == (206, 100)

        sprite = await same_as_callback(vod, await receiver.task_done(ids["imageSprite"]))
        (sheet_set,) = sprite.outputs.sprites
        assert (sheet_set.definition, sheet_set.total_count) == (10, 1)
        assert sheet_set.webvtt_url is not None
        vtt = await fetch(vod, sheet_set.webvtt_url, "text/vtt; charset=utf-8")
        cues = parse_vtt(vtt.text, sheet_set.webvtt_url)
        assert [(c.start, c.end, c.x, c.y, c.w, c.h) for c in cues] == [(0, 6.0, 0, 0, 160, 90)]
        sheet = await fetch(vod, sheet_set.image_urls[0], "image/jpeg")
        assert image_size(sheet.content) == (1600, 900)  # 10 x 10 cells of 160x90
        assert check_cues(cues, 6.0, {cues[0].image: image_size(sheet.content)}) is None

        procedure = await same_as_callback(vod, done)
        assert (procedure.kind, procedure.success, procedure.file_id) == (
            "ProcedureStateChanged",
            True,
            uploaded.file_id,
        )
        assert [(t.task_type, t.status, t.definition) for t in procedure.sub_tasks] == [
            ("Transcode", "SUCCESS", 20),
            ("ImageSprites", "SUCCESS", 10),
        ]
        # Each entry names its task (not in Tencent's table): a client of the tasks-shaped
        # answer ties the procedure's event to the tasks it recorded.
        assert procedure.sub_task_ids == (ids["transcode"], ids["imageSprite"])
        assert procedure.outputs.meta is not None
        assert procedure.outputs.meta.duration == pytest.approx(6.0, abs=SLACK)
        assert procedure.outputs.play[0].url == play.url

        status = await vod.client.get_task_status([*ids.values(), procedure.task_id])
        assert {entry.status for entry in status.task_list} == {"Finished"}
        listed = await vod.client.get_task_list("FINISHED", file_id=uploaded.file_id)
        assert [entry.vod_task_id for entry in listed.task_list] == [procedure.task_id]
        video = await vod.client.get_video_info(uploaded.file_id)
        assert video.basic_info is not None
        assert (video.basic_info.duration, video.basic_info.type) == (6, "mp4")
        assert video.transcode_info is not None
        assert [t.definition for t in video.transcode_info.transcode_list] == [0, 20]
        assert video.image_sprite_info is not None
        (listed_sprite,) = video.image_sprite_info.image_sprite_list
        assert (listed_sprite.width, listed_sprite.height, listed_sprite.total_count) == (
            160,
            90,
            1,
        )


async def test_sprite_sheets_fill_a_grid_and_the_webvtt_points_into_it(
    sqlite_url: str, tmp_path: Path, recordings: Recordings, quick_sprites: Path
) -> None:
    receiver = Receiver()
    async with running_engine(
        sqlite_url, tmp_path / "vod", receiver=receiver, engine_procedures=quick_sprites
    ) as vod:
        uploaded = await vod.upload(recordings.long)
        answer = await vod.process({"fileId": uploaded.file_id, "procedure": "QuickSprites"})
        event = parse_event(await receiver.task_done(answer.tasks[0].task_id))
        (sprites,) = event.outputs.sprites
        assert sprites.total_count == 10  # 20 s, one every 2 s
        assert len(sprites.image_urls) == 2  # 9 cells per sheet
        assert sprites.webvtt_url is not None
        cues = parse_vtt((await vod.http.get(sprites.webvtt_url)).text, sprites.webvtt_url)
        sizes = {
            url: image_size((await fetch(vod, url, "image/jpeg")).content)
            for url in sprites.image_urls
        }
        assert set(sizes.values()) == {(192, 108)}
        assert check_cues(cues, 20.0, sizes) is None
        for k, cue in enumerate(cues):
            cell = k % 9
            assert (cue.start, cue.image) == (2 * k, sprites.image_urls[k // 9])
            assert (cue.x, cue.y, cue.w, cue.h) == ((cell % 3) * 64, (cell // 3) * 36, 64, 36)


# --- gen: clip and concat -----------------------------------------------------------------------


async def test_clips_with_negative_offsets_are_joined_then_snapshotted(
    sqlite_url: str, tmp_path: Path, recordings: Recordings
) -> None:
    receiver = Receiver()
    async with running_engine(sqlite_url, tmp_path / "vod", receiver=receiver) as vod:
        six = await vod.upload(recordings.six)
        four = await vod.upload(recordings.segments[0])
        answer = await vod.call(
            "ProcessFileByProcedure",
            {
                "gen.clip.fileList.0.fileId": six.file_id,
                "gen.clip.fileList.0.startTimeOffset": "-4",  # the last 4 s
                "gen.clip.fileList.1.fileId": four.file_id,
                "gen.clip.fileList.1.endTimeOffset": "-2",  # all but the last 2 s
                "gen.concat.dstType": "mp4",
                "procedure": "TranscodeAndSnapshots",
            },
        )
        assert answer["code"] == 0, answer
        clip_ids, concat_id = answer["clipTaskId"], answer["concatTaskId"]
        assert len(clip_ids) == 2

        lengths = []
        for clip_id, source in zip(clip_ids, (six, four), strict=True):
            clip = await same_as_callback(vod, await receiver.task_done(clip_id))
            assert (clip.kind, clip.success, clip.file_id) == ("ClipComplete", True, source.file_id)
            (made,) = clip.outputs.files
            assert made.url is not None
            lengths.append((await probe_url(vod, made.url, tmp_path / clip_id)).duration)
            info = await vod.client.get_task_info(clip_id)
            assert (info.model_extra or {})["detail"] == {"method": "copy", "streamCopy": True}
        assert lengths == [pytest.approx(4.0, abs=SLACK), pytest.approx(2.0, abs=SLACK)]

        concat = await same_as_callback(vod, await receiver.task_done(concat_id))
        assert (concat.kind, concat.success) == ("ConcatComplete", True)
        (joined,) = concat.outputs.files
        assert joined.file_type == "mp4"
        assert joined.url is not None
        assert (await probe_url(vod, joined.url, tmp_path / "joined")).duration == pytest.approx(
            6.0, abs=2 * SLACK
        )
        info = await vod.client.get_task_info(concat_id)
        assert (info.model_extra or {})["detail"]["streamCopy"] is True  # like streams

        snaps = await same_as_callback(
            vod, await receiver.task_done(answer["snapshotByTimeOffsetTaskId"])
        )
        assert [s.time_offset_ms for s in snaps.outputs.snapshots] == [0, 5000, 10000]
        for shot in snaps.outputs.snapshots:
            picture = await fetch(vod, shot.url, "image/jpeg")
            assert image_size(picture.content) == (320, 180)

        procedure = parse_event(
            await receiver.wait_for(lambda b: b["eventType"] == "ProcedureStateChanged")
        )
        assert procedure.success
        assert procedure.file_id == joined.file_id  # the procedure ran on the new file
        assert [t.task_type for t in procedure.sub_tasks] == ["Transcode", "SnapshotByTimeOffset"]
        video = await vod.client.get_video_info(joined.file_id or "")
        assert video.basic_info is not None
        assert video.basic_info.model_extra == {"sourceType": "Concat", "streamId": ""}


async def test_stream_info_clips_every_recording_in_the_range(
    database_url: str, tmp_path: Path, recordings: Recordings
) -> None:
    receiver = Receiver()
    async with running_engine(
        database_url, tmp_path / "vod", receiver=receiver, engine_answer_shape="both"
    ) as vod:
        segments = []
        for n, path in enumerate(recordings.segments):  # 4 s each, back to back
            start = T0 + 4 * n
            segments.append(
                await vod.upload(
                    path, stream_id="lecture_7", record_start=start, record_end=start + 4
                )
            )
        other = await vod.upload(
            recordings.six, stream_id="lecture_8", record_start=T0, record_end=T0 + 6
        )
        recorded = parse_event(
            await receiver.wait_for(
                lambda b: b["eventType"] == "NewFileUpload" and b["data"]["fileId"] == other.file_id
            )
        )
        assert (recorded.source_type, recorded.stream_id) == ("Record", "lecture_8")

        answer = await vod.process(
            {
                "gen": {
                    "clip": {
                        "streamInfo": {
                            "streamId": "lecture_7",
                            "startTime": T0 + 2,
                            "endTime": T0 + 10,
                        }
                    },
                    "concat": {"dstType": "mp4"},
                },
                "procedure": "TranscodeAndSprite",
            }
        )
        clips = [task.task_id for task in answer.tasks if task.kind == "clip"]
        assert answer.procedure_task_id is not None
        done = parse_event(await receiver.procedure_done(answer.procedure_task_id))
        assert done.success, done.error_message

        sources, lengths = [], []
        for clip_id in clips:  # in recording order
            clip = parse_event(await receiver.task_done(clip_id))
            sources.append(clip.file_id)
            url = clip.outputs.files[0].url
            assert url is not None
            lengths.append((await probe_url(vod, url, tmp_path / clip_id)).duration)
        assert sources == [s.file_id for s in segments]
        # [2, 4) of the first, all of the second, [0, 2) of the third.
        assert lengths == [
            pytest.approx(2.0, abs=SLACK),
            pytest.approx(4.0, abs=SLACK),
            pytest.approx(2.0, abs=SLACK),
        ]
        assert done.outputs.meta is not None
        assert done.outputs.meta.duration == pytest.approx(8.0, abs=3 * SLACK)
        assert done.outputs.play[0].duration == pytest.approx(8.0, abs=3 * SLACK)


async def test_concat_of_a_file_id_list_into_hls_renditions(
    sqlite_url: str, tmp_path: Path, recordings: Recordings
) -> None:
    receiver = Receiver()
    async with running_engine(
        sqlite_url, tmp_path / "vod", receiver=receiver, engine_answer_shape="procedure"
    ) as vod:
        first = await vod.upload(recordings.segments[0])
        second = await vod.upload(recordings.segments[1])
        answer = await vod.process(
            {
                "gen": {"concat": {"fileIdList": [first.file_id, second.file_id], "dstType": "ts"}},
                "procedure": "TranscodeHLS",
            }
        )
        assert [task.kind for task in answer.tasks] == ["procedure"]
        procedure_id = answer.procedure_task_id
        assert procedure_id is not None
        done = await same_as_callback(vod, await receiver.procedure_done(procedure_id))
        assert done.success, done.error_message

        concat = parse_event(await receiver.wait_for(lambda b: b["eventType"] == "ConcatComplete"))
        (joined,) = concat.outputs.files
        assert (joined.file_type, joined.file_id) == ("ts", done.file_id)
        assert [p.definition for p in done.outputs.play] == [210, 220, 230]
        for play in done.outputs.play:
            assert play.url.endswith(f"/v.f{play.definition}/index.m3u8")
            assert play.container == "hls"
            info = await probe_url(vod, play.url, tmp_path / f"hls{play.definition}")
            assert info.duration == pytest.approx(8.0, abs=3 * SLACK)
            assert info.video is not None
            assert (info.video.width, info.video.height) == (320, 180)
        video = await vod.client.get_video_info(joined.file_id or "")
        assert video.transcode_info is not None
        assert [(t.definition, t.container) for t in video.transcode_info.transcode_list] == [
            (0, "ts"),
            (210, "hls"),
            (220, "hls"),
            (230, "hls"),
        ]


async def test_gen_alone_joins_unlike_files_by_re_encoding(
    sqlite_url: str, tmp_path: Path, recordings: Recordings
) -> None:
    receiver = Receiver()
    async with running_engine(
        sqlite_url, tmp_path / "vod", receiver=receiver, engine_answer_shape="both"
    ) as vod:
        six = await vod.upload(recordings.six)
        tiny = await vod.upload(recordings.tiny)
        answer = await vod.process(
            {"gen": {"concat": {"fileIdList": [six.file_id, tiny.file_id], "dstType": "mp4"}}}
        )
        assert [task.kind for task in answer.tasks] == ["concat", "procedure"]
        assert answer.procedure_task_id is not None
        done = parse_event(await receiver.procedure_done(answer.procedure_task_id))
        assert (done.success, done.sub_tasks) == (True, ())  # no procedure: only the new file
        concat_id = answer.tasks[0].task_id
        info = await vod.client.get_task_info(concat_id)
        detail = (info.model_extra or {})["detail"]
        assert detail["streamCopy"] is False
        assert "input 1 (f0.mp4) video resolution 160x90 differs from 320x180" in detail["reason"]
        joined = parse_event(await receiver.task_done(concat_id)).outputs.files[0]
        assert joined.url is not None
        out = await probe_url(vod, joined.url, tmp_path / "joined")
        assert out.duration == pytest.approx(8.0, abs=SLACK)
        assert out.video is not None
        assert (out.video.width, out.video.height) == (320, 180)


# --- failures -----------------------------------------------------------------------------------


async def test_bad_source_media_fails_its_tasks_with_30009(
    sqlite_url: str, tmp_path: Path, recordings: Recordings
) -> None:
    receiver = Receiver()
    async with running_engine(sqlite_url, tmp_path / "vod", receiver=receiver) as vod:
        uploaded = await vod.upload(recordings.six)
        stored = vod.stored(uploaded.file_id)
        stored.write_bytes(stored.read_bytes()[:2000])  # the disk ate it

        answer = await vod.process({"fileId": uploaded.file_id, "procedure": "TranscodeAndSprite"})
        for task in answer.tasks:
            failed = await same_as_callback(vod, await receiver.task_done(task.task_id))
            assert (failed.success, failed.error_code) == (False, 30009)
            assert failed.error_class is ErrorClass.MEDIA
            assert failed.error_message is not None
            # FFmpeg's reason, naming the file but not where the engine keeps it.
            assert "error reading header" in failed.error_message
            assert f"not a media file: {uploaded.file_id}/f0.mp4: " in failed.error_message
        procedure = parse_event(
            await receiver.wait_for(lambda b: b["eventType"] == "ProcedureStateChanged")
        )
        assert (procedure.success, procedure.error_code) == (False, 30009)
        assert {t.status for t in procedure.sub_tasks} == {"FAIL"}

        # A failed clip fails what depends on it, without running it.
        receiver.bodies.clear()
        answer = await vod.call(
            "ProcessFileByProcedure",
            {
                "gen.clip.fileList.0.fileId": uploaded.file_id,
                "gen.concat.dstType": "mp4",
                "procedure": "TranscodeAndSprite",
            },
        )
        clip = parse_event(await receiver.task_done(answer["clipTaskId"]))
        assert (clip.kind, clip.success, clip.error_code) == ("ClipComplete", False, 30009)
        for later in (answer["concatTaskId"], answer["transcodeTaskId"]):
            event = parse_event(await receiver.task_done(later))
            assert (event.success, event.error_code) == (False, 30009)
            assert event.error_message is not None
            assert event.error_message.startswith(f"not run: clip task {answer['clipTaskId']}")
        procedure = parse_event(
            await receiver.wait_for(lambda b: b["eventType"] == "ProcedureStateChanged")
        )
        assert procedure.error_code == 30009
        assert procedure.error_message is not None
        assert "error reading header" in procedure.error_message


# --- restarts -----------------------------------------------------------------------------------


class InterruptibleMedia(Media):
    """Real media operations that say when a transcode has started."""

    def __init__(self) -> None:
        super().__init__(FFmpeg(threads=2))
        self.transcoding = asyncio.Event()

    async def transcode(self, src: Any, dst: Any, template: TranscodeTemplate) -> MediaInfo:
        self.transcoding.set()
        return await super().transcode(src, dst, template)


async def test_a_restart_mid_task_runs_it_again_and_calls_back(
    database_url: str, tmp_path: Path, recordings: Recordings
) -> None:
    receiver, media = Receiver(), InterruptibleMedia()
    folder = tmp_path / "vod"
    async with running_engine(
        database_url, folder, receiver=receiver, media=media, engine_workers=1
    ) as first:
        uploaded = await first.upload(recordings.long)
        answer = await first.process(
            {"fileId": uploaded.file_id, "procedure": "TranscodeAndSprite"}
        )
        transcode_id = answer.tasks[0].task_id
        await media.transcoding.wait()
        status = await first.client.get_task_status([transcode_id])
        assert status.task_list[0].status == "Processing"
    # Stopped mid-transcode: FFmpeg was killed and the task handed back.
    assert not [b for b in receiver.bodies if b["data"].get("vodTaskId") == transcode_id]
    leftovers = [p.name for p in (folder / "vod" / uploaded.file_id).iterdir()]
    assert "v.f20.mp4" not in leftovers

    async with running_engine(database_url, folder, receiver=receiver) as second:
        assert (await second.client.get_task_status([transcode_id])).task_list[0].status in (
            "Queuing",
            "Processing",
        )
        event = parse_event(await receiver.task_done(transcode_id))
        assert event.success, event.error_message
        assert event.outputs.play[0].duration == pytest.approx(20.0, abs=SLACK)
        done = parse_event(
            await receiver.wait_for(lambda b: b["eventType"] == "ProcedureStateChanged")
        )
        assert done.success
        async with second.db.read() as conn:
            task = await store.get_task(conn, transcode_id)
        assert task is not None
        assert task.attempts == 2


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.mark.parametrize("where", ["another machine", "this machine"])
async def test_a_task_of_a_crashed_process_is_taken_over(
    sqlite_url: str, tmp_path: Path, recordings: Recordings, where: str
) -> None:
    """On another machine, once its lease has run out; on this one, at once (its process is
    gone), though its lease would last another hour. The events it was sending too."""
    receiver = Receiver()
    folder = tmp_path / "vod"
    now = datetime.now(UTC)
    if where == "another machine":
        owner, lease_until = "gone-host:4242:dead", now - timedelta(minutes=1)
    else:
        owner = f"{owner_name().split(':')[0]}:{_dead_pid()}:dead"
        lease_until = now + timedelta(hours=1)
    async with running_engine(sqlite_url, folder, receiver=receiver, work=False) as first:
        uploaded = await first.upload(recordings.six)
        answer = await first.process(
            {"fileId": uploaded.file_id, "procedure": "TranscodeAndSprite"}
        )
        async with first.db.transaction() as conn:
            claimed = await store.claim_task(conn, owner, now - timedelta(minutes=2), lease_until)
            sending = await store.claim_pushes(conn, owner, datetime.now(UTC), lease_until, 10)
        assert claimed is not None
        assert claimed.task_id == answer.tasks[0].task_id
        assert [e.body["eventType"] for e in sending] == ["NewFileUpload"]
    async with running_engine(sqlite_url, folder, receiver=receiver):
        await receiver.wait_for(lambda b: b["eventType"] == "NewFileUpload")
        event = parse_event(await receiver.task_done(claimed.task_id))
        assert event.success
        await receiver.wait_for(lambda b: b["eventType"] == "ProcedureStateChanged")


async def test_two_engines_on_one_database_run_each_task_once(
    database_url: str, tmp_path: Path, recordings: Recordings
) -> None:
    """Scale-out: both engines' workers and callback senders share the queue through leases."""
    receiver = Receiver()
    folder = tmp_path / "vod"  # one media directory, as on a shared volume
    shared: dict[str, Any] = {"engine_workers": 1, "engine_shared_media": True}
    async with (
        running_engine(database_url, folder, receiver=receiver, **shared) as first,
        running_engine(database_url, folder, receiver=receiver, **shared) as second,
    ):
        files = [await first.upload(recordings.six), await second.upload(recordings.segments[0])]
        procedures = []
        for vod, uploaded in zip((first, second), files, strict=True):
            for name in ("TranscodeAndSprite", "TranscodeAndSnapshots"):
                vod.engine.api.shape = "procedure"
                answer = await vod.process({"fileId": uploaded.file_id, "procedure": name})
                assert answer.procedure_task_id is not None
                procedures.append(answer.procedure_task_id)
        for procedure_id in procedures:
            assert parse_event(await receiver.procedure_done(procedure_id)).success
        await asyncio.sleep(0.5)  # time for a duplicate to show up, if there were one
        async with first.db.read() as conn:
            members = [
                task
                for procedure_id in procedures
                for task in await store.procedure_members(conn, procedure_id)
            ]
    assert len(members) == 8
    assert {(task.status, task.err_code, task.attempts) for task in members} == {("finished", 0, 1)}
    sent = [
        (b["eventType"], b["data"].get("vodTaskId") or b["data"]["fileId"]) for b in receiver.bodies
    ]
    assert len(sent) == len(set(sent)) == 2 + 8 + 4  # uploads, tasks, procedures: once each
