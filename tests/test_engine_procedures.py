"""The engine's procedures file: the built-in set, and every problem of a bad file reported with
its file, line, column and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config import Settings
from orchestrator.engine import Engine
from orchestrator.engine.procedures import (
    PlannedTask,
    ProceduresError,
    load_procedures,
    parse_procedures,
)
from orchestrator.store.db import Database


def test_the_built_in_procedures() -> None:
    procedures = load_procedures()
    assert procedures.procedures["TranscodeAndSprite"].tasks == (
        PlannedTask("transcode", 20),
        PlannedTask("image_sprite", 10),
    )
    mp4 = {d: (t.container, t.width, t.height) for d, t in procedures.transcode.items()}
    assert {d: mp4[d] for d in (10, 20, 30, 40)} == {
        10: ("mp4", 640, 360),
        20: ("mp4", 854, 480),
        30: ("mp4", 1280, 720),
        40: ("mp4", 1920, 1080),
    }
    rates = [procedures.transcode[d].video_bitrate for d in (10, 20, 30, 40)]
    assert rates == sorted(rates)
    assert {procedures.transcode[d].container for d in (210, 220, 230)} == {"hls"}
    sprite = procedures.image_sprite[10]
    assert (sprite.interval, sprite.rows, sprite.columns, sprite.width, sprite.height) == (
        10,
        10,
        10,
        160,
        90,
    )
    assert {"TranscodeHLS", "TranscodeAndSnapshots"} <= set(procedures.procedures)
    snapshots = procedures.procedures["TranscodeAndSnapshots"].tasks[-1]
    assert (snapshots.kind, snapshots.time_offsets) == ("snapshot", (0, 5000, 10000))


def test_every_problem_names_file_position_and_key() -> None:
    text = """\
transcodeTemplates:
  20: {videoBitrate: 800, hieght: 480}
  0: {videoBitrate: 100}
imageSpriteTemplates:
  10: {width: 0, height: 0}
procedures:
  Broken:
    transcode: [25]
  Empty: {}
"""
    with pytest.raises(ProceduresError) as info:
        parse_procedures(text, "mine.yaml")
    assert info.value.problems == [
        "mine.yaml:2:27: transcodeTemplates.20.hieght: unknown key",
        "mine.yaml:3:3: transcodeTemplates.0: the key '0': Input should be greater than 0",
        "mine.yaml:5:3: imageSpriteTemplates.10: expected width or height "
        "(0 follows the picture's aspect ratio)",
        "mine.yaml:9:3: procedures.Empty: expected at least one of transcode, imageSprite, "
        "snapshotByTimeOffset",
    ]
    with pytest.raises(ProceduresError) as info:
        parse_procedures(
            "transcodeTemplates:\n  20: {videoBitrate: 800}\n"
            "procedures:\n  A: {transcode: [20, 25]}\n"
        )
    assert info.value.problems == [
        "<procedures>:4:23: procedures.A.transcode.1: no such template 25 (defined: 20)"
    ]


def test_unreadable_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ProceduresError, match=r"missing\.yaml: cannot read it"):
        load_procedures(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("procedures: [unclosed\n")
    with pytest.raises(ProceduresError, match=r"bad\.yaml:2:1: not valid YAML"):
        load_procedures(bad)


def test_the_engine_refuses_to_start_with_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "procedures.yaml"
    bad.write_text("procedures: {}\n")
    settings = Settings(data_dir=tmp_path, engine_procedures=bad)
    with pytest.raises(ProceduresError, match="procedures: Dictionary should have at least 1"):
        Engine(settings, Database(f"sqlite:///{tmp_path / 'x.db'}"))
