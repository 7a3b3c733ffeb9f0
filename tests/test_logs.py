"""Log lines: one per entry, whatever text from outside they carry."""

from __future__ import annotations

import json
import logging

from orchestrator.logs import JsonFormatter, TextFormatter

# A VOD event's error message made to look like a second entry when the log is read.
FORGED = "bad media\n10:00:00.000 INFO    vodflow.auth: admin token rotated\x1b[2K"


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("vodflow.runner", logging.INFO, __file__, 1, message, args, None)
    entry.__dict__.update(extra)
    return entry


def test_text_lines_escape_line_breaks_and_control_characters_from_outside() -> None:
    line = TextFormatter().format(record("%s -> %s: %s", "running", "failed", FORGED, step=FORGED))
    assert "\n" not in line
    assert "\x1b" not in line
    escaped = "bad media\\n10:00:00.000 INFO    vodflow.auth: admin token rotated\\x1b[2K"
    assert line.endswith(f"vodflow.runner: running -> failed: {escaped}  step={escaped}")


def test_json_lines_keep_the_text_as_it_came() -> None:
    line = JsonFormatter().format(record("%s", FORGED, step=FORGED))
    assert "\n" not in line
    entry = json.loads(line)
    assert (entry["message"], entry["step"]) == (FORGED, FORGED)
