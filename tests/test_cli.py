"""The `vodflow` command: validate, schema, db upgrade, and serve over real HTTP."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from click.testing import Result
from typer.testing import CliRunner

from orchestrator import __version__, cli
from orchestrator.cli import app
from orchestrator.store import migrate
from tests.conftest import ROOT, free_port
from tests.servers import vodflow_process

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("clean_env")


def test_validate_accepts_the_examples() -> None:
    result = runner.invoke(app, ["validate", str(ROOT / "workflows")])
    assert result.exit_code == 0, result.output
    assert "lecture-replay.yaml  (lecture-replay, version " in result.output
    assert "recording-transcode.yaml" in result.output


def test_validate_prints_every_problem_and_exits_non_zero(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: a\ntriggers: [{type: manul}]\nsteps: []\n")
    (tmp_path / "b.yaml").write_text("name: b\nsteps: [{name: x, notify: {ur: u}}]\n")
    result = runner.invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == 1
    out = result.output
    assert f"{tmp_path / 'a.yaml'}:2:19: triggers[0]: unknown trigger type 'manul'" in out
    assert f"{tmp_path / 'a.yaml'}:3:8: steps: expected a list with at least 1 item" in out
    assert f"{tmp_path / 'b.yaml'}:1:1: triggers: required key 'triggers' is missing" in out
    assert "did you mean 'url'?" in out
    assert "5 problems found" in out


def test_validate_as_json_for_editors_and_ci(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: a\ntriggers: [{type: manul}]\nsteps: []\n")
    refused = runner.invoke(app, ["validate", "--json", str(tmp_path)])
    assert refused.exit_code == 1
    problems = json.loads(refused.stdout)["problems"]
    assert [(p["line"], p["column"], p["path"]) for p in problems] == [
        (2, 19, "triggers[0]"),
        (3, 8, "steps"),
    ]
    assert problems[0]["file"] == str(tmp_path / "a.yaml")
    accepted = runner.invoke(app, ["validate", "--json", str(ROOT / "workflows")])
    assert accepted.exit_code == 0, accepted.output
    answer = json.loads(accepted.stdout)
    assert answer["problems"] == []
    assert sorted(w["name"] for w in answer["workflows"]) == [
        "lecture-replay",
        "recording-transcode",
    ]


def test_validate_says_when_there_is_nothing_to_validate(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == 1
    assert f"no workflow files (*.yaml, *.yml) in {tmp_path}" in result.output
    (tmp_path / "wf.yaml").write_text("name: wf\ntriggers: [{type: manual}]\nsteps: []\n")
    result = runner.invoke(app, ["validate", str(tmp_path)])
    assert "wf.yaml:3:8: steps: expected a list with at least 1 item; found an empty list" in (
        result.output
    )


UNKNOWN_PROCEDURE = """\
name: wf
triggers: [{type: manual, params: [fileId]}]
steps:
  - name: transcode
    process:
      fileId: "{{ trigger.fileId }}"
      procedure: NoSuchProcedure
"""
BUILT_IN_PROCEDURES = (
    "(the embedded engine's built-in procedures file defines: "
    "TranscodeAll, TranscodeAndSnapshots, TranscodeAndSprite, TranscodeHLS)"
)


def test_validate_checks_procedure_names_when_vod_is_the_embedded_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = tmp_path / "workflows" / "wf.yaml"
    wf.parent.mkdir()
    wf.write_text(UNKNOWN_PROCEDURE)
    result = runner.invoke(app, ["validate", str(wf.parent)])
    assert result.exit_code == 1
    assert result.output == (
        f"{wf}:7:7: steps[0].process.procedure: unknown procedure 'NoSuchProcedure' "
        f"{BUILT_IN_PROCEDURES}\n1 problem found\n"
    )
    wf.write_text(UNKNOWN_PROCEDURE.replace("NoSuchProcedure", "TranscodeAndSprites"))
    result = runner.invoke(app, ["validate", str(wf.parent)])
    assert "unknown procedure 'TranscodeAndSprites'; did you mean 'TranscodeAndSprite'?" in (
        result.output
    )
    # A templated name is only known when the step runs.
    wf.write_text(UNKNOWN_PROCEDURE.replace("NoSuchProcedure", '"{{ trigger.procedure }}"'))
    assert runner.invoke(app, ["validate", str(wf.parent)]).exit_code == 0
    # The engine's procedures are the file VODFLOW_ENGINE_PROCEDURES names.
    wf.write_text(UNKNOWN_PROCEDURE)
    own = tmp_path / "procedures.yml"
    own.write_text(
        "imageSpriteTemplates: {10: {}}\nprocedures:\n  NoSuchProcedure: {imageSprite: [10]}\n"
    )
    monkeypatch.setenv("VODFLOW_ENGINE_PROCEDURES", str(own))
    result = runner.invoke(app, ["validate", str(wf.parent)])
    assert result.exit_code == 0, result.output
    wf.write_text(UNKNOWN_PROCEDURE.replace("NoSuchProcedure", "TranscodeAndSprite"))
    result = runner.invoke(app, ["validate", str(wf.parent)])
    assert result.exit_code == 1
    assert (
        "unknown procedure 'TranscodeAndSprite' (the embedded engine's procedures file "
        f"{own} defines: NoSuchProcedure)"
    ) in result.output
    # An invalid procedures file is a configuration error, whatever the workflows say.
    own.write_text("procedures: {}\n")
    result = runner.invoke(app, ["validate", str(wf.parent)])
    assert result.exit_code == 2
    assert result.output.startswith(f"vodflow: invalid procedures file:\n  {own}:1:1: ")


def test_validate_leaves_procedure_names_to_a_vod_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "wf.yaml").write_text(UNKNOWN_PROCEDURE)
    # Tencent Cloud: the procedures live in the customer's account, unknown here.
    monkeypatch.setenv("VODFLOW_VOD_ENDPOINT", "https://vod.api.qcloud.com/v2/index.php")
    result = runner.invoke(app, ["validate", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"ok  {tmp_path / 'wf.yaml'}  (wf, version ")
    # No engine served here: VOD at this vodflow's own URL is an engine serving elsewhere.
    monkeypatch.delenv("VODFLOW_VOD_ENDPOINT")
    monkeypatch.setenv("VODFLOW_ENGINE", "false")
    assert runner.invoke(app, ["validate", str(tmp_path)]).exit_code == 0


def test_version_prints_the_version_without_a_command() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output == f"vodflow {__version__}\n"


def test_schema_prints_json_schema() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.output)["title"] == "vodflow workflow"


def test_db_upgrade_creates_the_sqlite_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VODFLOW_DATA_DIR", str(tmp_path / "data"))
    result = runner.invoke(app, ["db", "upgrade", "0005"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "vodflow.db").exists()
    assert result.output.startswith("database created at 0005: sqlite:///")
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.output.startswith("database migrated from 0005 to head: ")
    assert runner.invoke(app, ["db", "upgrade"]).output.startswith("database already at head: ")


def test_a_bad_setting_fails_start_up_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VODFLOW_PORT", "99999")
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 2
    assert "VODFLOW_PORT: expected less than or equal to 65535 (got '99999')" in result.output


def test_serve_answers_healthz_and_lists_workflows(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VODFLOW_")},
        "VODFLOW_DATA_DIR": str(tmp_path / "data"),
        "VODFLOW_PORT": str(port),
        "VODFLOW_WORKFLOWS": str(ROOT / "workflows"),
    }
    vodflow = [sys.executable, "-m", "orchestrator.cli"]
    subprocess.run([*vodflow, "db", "upgrade"], env=env, check=True, capture_output=True)
    server = vodflow_process(["serve"], env)
    tab: socket.socket | None = None
    try:
        base = f"http://127.0.0.1:{port}"
        health = httpx.get(f"{base}/healthz", timeout=2)
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        workflows = httpx.get(f"{base}/api/workflows", timeout=5).json()["workflows"]
        assert [w["name"] for w in workflows] == ["lecture-replay", "recording-transcode"]
        assert workflows[0]["triggers"] == ["stream.session"]
        assert workflows[0]["steps"] == [
            {"name": "replay", "kind": "process"},
            {"name": "publish", "kind": "notify"},
        ]
        # The README's manual trigger, against the shipped workflows.
        body = {
            "workflow": "recording-transcode",
            "params": {"fileId": "528"},
            "idempotencyKey": "k1",
        }
        created = httpx.post(f"{base}/api/runs", json=body, timeout=5)
        assert created.status_code == 201, created.text
        # A dashboard left open holds the live stream; stopping must not wait for it.
        tab = socket.create_connection(("127.0.0.1", port))
        tab.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        assert tab.recv(200).startswith(b"HTTP/1.1 200")
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=15)
        if tab is not None:
            tab.close()
    assert f"dashboard at http://127.0.0.1:{port}/" in output
    # The stream is ended when the server stops, not cancelled once the grace period ran out
    # (which logged an error and a CancelledError traceback per open dashboard).
    assert "timeout graceful shutdown exceeded" not in output
    assert "Exception in ASGI application" not in output


def test_a_stopping_server_ends_the_live_streams_and_quiets_the_engine_before_it_exits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both before the listener closes: a dashboard's stream would hold the stop for its whole
    grace period, and an engine event sent to the closed receiver would fail and count."""
    import uvicorn

    from orchestrator.config import Settings

    calls: list[str] = []
    services = SimpleNamespace(
        live=SimpleNamespace(end_streams=lambda: calls.append("streams ended")),
        engine=SimpleNamespace(quiesce=lambda: calls.append("engine quiet")),
    )

    def run(server: uvicorn.Server, sockets: object = None) -> None:
        server.handle_exit(signal.SIGTERM, None)
        calls.append("exiting" if server.should_exit else "still serving")

    monkeypatch.setattr(uvicorn.Server, "run", run)
    application = SimpleNamespace(state=SimpleNamespace(services=services))
    cli._run_server(application, Settings(data_dir=tmp_path))  # type: ignore[arg-type]
    assert calls == ["streams ended", "engine quiet", "exiting"]


def _serving(database_url: str, tmp_path: Path, port: int) -> dict[str, str]:
    """The environment of a `vodflow serve` with the engine on, at ``port``."""
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("VODFLOW_")},
        "VODFLOW_DATA_DIR": str(tmp_path / f"data-{port}"),
        "VODFLOW_DATABASE_URL": database_url,
        "VODFLOW_PORT": str(port),
        "VODFLOW_WORKFLOWS": str(ROOT / "workflows"),
    }


def _started(env: dict[str, str]) -> subprocess.Popen[str]:
    """`vodflow serve` once it answers /healthz."""
    return vodflow_process(["serve"], env)


def _refused(env: dict[str, str]) -> str:
    """The one line a `vodflow serve` that may not start prints."""
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    return line


def test_a_second_engine_on_one_database_stops_with_one_line_until_the_first_is_gone(
    tmp_path: Path, database_url: str
) -> None:
    migrate.upgrade(database_url)
    first, second = free_port(), free_port()
    holder = f"{socket.gethostname()}:{first}"
    server = _started(_serving(database_url, tmp_path, first))
    restarted: subprocess.Popen[str] | None = None
    try:
        line = _refused(_serving(database_url, tmp_path, second))
        assert line.startswith("vodflow: the embedded VOD engine already runs on the database ")
        assert f": {holder} holds it since " in line
        assert "set VODFLOW_ENGINE=false here" in line
        server.kill()  # kill -9: the claim is not given up
        server.wait(timeout=15)
        # Its lease (60 s) holds the claim against any other engine ...
        assert f": {holder} holds it since " in _refused(_serving(database_url, tmp_path, second))
        # ... but the engine restarted at the same host:port takes it over at once.
        restarted = _started(_serving(database_url, tmp_path, first))
    finally:
        for process in (server, restarted):
            if process is not None and process.poll() is None:
                process.terminate()
                process.communicate(timeout=15)


def _serve() -> Result:
    """``vodflow serve`` in this process, for a start-up it refuses: one that gets as far as
    serving fails the test instead of serving for ever."""

    def listen(*args: object) -> None:
        pytest.fail("vodflow serve started serving")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "_run_server", listen)
        # serve configures logging onto the runner's stream, closed once it returns: undo that
        patch.setattr(logging.root, "handlers", list(logging.root.handlers))
        patch.setattr(logging.root, "level", logging.root.level)
        return runner.invoke(app, ["serve"])


def _unmigrated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Settings for a data directory whose database was never migrated; its URL."""
    monkeypatch.setenv("VODFLOW_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("VODFLOW_WORKFLOWS", str(ROOT / "workflows"))
    monkeypatch.setenv("VODFLOW_PORT", str(free_port()))  # no server answers there
    return f"sqlite:///{tmp_path / 'data' / 'vodflow.db'}"


def test_serve_refuses_a_database_that_was_never_migrated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _unmigrated(tmp_path, monkeypatch)
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 1
    assert result.output == (
        f"vodflow: the database {url} is not migrated (revision none: no tables yet; "
        "this vodflow needs 0007): run `vodflow db upgrade`\n"
    )
    assert not (tmp_path / "data" / "vodflow.db").exists()  # the check created nothing


def test_commands_on_the_database_refuse_one_behind_or_ahead_of_the_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _unmigrated(tmp_path, monkeypatch)
    never = runner.invoke(app, ["runs"])  # no server answers: the database directly
    assert never.exit_code == 1
    assert f"vodflow: the database {url} is not migrated (revision none" in never.output
    assert "Traceback" not in never.output
    assert runner.invoke(app, ["db", "upgrade", "0003"]).exit_code == 0
    behind = runner.invoke(app, ["runs", "--direct"])
    assert behind.exit_code == 1
    assert "(revision 0003; this vodflow needs 0007): run `vodflow db upgrade`" in behind.output
    with sqlite3.connect(tmp_path / "data" / "vodflow.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099'")
    ahead = runner.invoke(app, ["serve"])
    assert ahead.exit_code == 1
    assert "is at revision 0099, which this vodflow does not know" in ahead.output
    with sqlite3.connect(tmp_path / "data" / "vodflow.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0003'")
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    current = runner.invoke(app, ["runs", "--direct", "--json"])
    assert current.exit_code == 0, current.output
    assert json.loads(current.stdout)["runs"] == []


def test_a_database_that_cannot_be_opened_is_named_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not running, or no such database: serve, engine serve, db upgrade and the commands on
    the database say which database and the driver's reason, instead of a traceback."""
    _unmigrated(tmp_path, monkeypatch)
    port = free_port()  # nothing listens there
    monkeypatch.setenv("VODFLOW_DATABASE_URL", f"postgresql://vf:s3cret@127.0.0.1:{port}/vodflow")
    monkeypatch.setattr(cli, "_run_server", lambda *args: pytest.fail("it started serving"))
    monkeypatch.setattr(logging.root, "handlers", list(logging.root.handlers))
    monkeypatch.setattr(logging.root, "level", logging.root.level)
    commands = (["serve"], ["engine", "serve"], ["db", "upgrade"], ["runs", "--direct"])
    for command in commands:
        result = runner.invoke(app, command)
        assert result.exit_code == 1, command
        assert "Traceback" not in result.output
        (line,) = result.output.splitlines()
        assert line.startswith(
            f"vodflow: cannot open the database postgresql://vf:***@127.0.0.1:{port}/vodflow: "
        ), line
        assert "Connection refused" in line


def test_database_urls_are_shown_without_their_password() -> None:
    assert migrate.redact("postgresql://vf:s3cret@db:5432/vodflow") == (
        "postgresql://vf:***@db:5432/vodflow"
    )


def test_serve_beyond_loopback_without_a_token_says_why_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _unmigrated(tmp_path, monkeypatch)
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    monkeypatch.setenv("VODFLOW_HOST", "0.0.0.0")
    # A command on the database directly listens on nothing: the host does not concern it.
    listed = runner.invoke(app, ["runs", "--direct", "--json"])
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output) == {"runs": [], "nextCursor": None}
    result = _serve()
    assert result.exit_code == 2
    assert result.output == (
        "vodflow: VODFLOW_HOST=0.0.0.0 exposes the dashboard API beyond this machine: "
        "set VODFLOW_API_TOKEN (and optionally VODFLOW_API_READ_TOKEN) first\n"
    )


def test_serve_refuses_a_procedure_its_embedded_engine_does_not_define(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _unmigrated(tmp_path, monkeypatch)
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    wf = tmp_path / "workflows" / "wf.yaml"
    wf.parent.mkdir()
    wf.write_text(UNKNOWN_PROCEDURE)
    monkeypatch.setenv("VODFLOW_WORKFLOWS", str(wf.parent))
    result = _serve()
    assert result.exit_code == 1
    assert result.output == (
        f"{wf}:7:7: steps[0].process.procedure: unknown procedure 'NoSuchProcedure' "
        f"{BUILT_IN_PROCEDURES}\n"
    )
    # The engine's own procedures file, invalid, stops it too: in one message, not a traceback.
    bad = tmp_path / "procedures.yaml"
    bad.write_text("procedures: {}\n")
    monkeypatch.setenv("VODFLOW_ENGINE_PROCEDURES", str(bad))
    result = _serve()
    assert result.exit_code == 2
    assert result.output == (
        f"vodflow: invalid procedures file:\n  {bad}:1:1: procedures: Dictionary should have at "
        "least 1 item after validation, not 0\n"
    )


def test_runs_and_events_tables_never_cut_an_id_on_a_narrow_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IDs are what people copy from these tables into the next command: on an 80-column
    terminal the other columns fold, and the IDs stay whole."""
    from orchestrator import console

    folder = tmp_path / "workflows"
    folder.mkdir()
    (folder / "wf.yaml").write_text(
        "name: wf\ntriggers: [{type: manual}]\n"
        "steps: [{name: tell, notify: {url: 'http://127.0.0.1:9/hook'}}]\n"
    )
    monkeypatch.setenv("VODFLOW_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("VODFLOW_WORKFLOWS", str(folder))
    monkeypatch.setenv("VODFLOW_PORT", str(free_port()))  # no server answers there
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    note = "a long stream id that makes the table wider than any terminal " * 2
    started = runner.invoke(app, ["trigger", "wf", "--direct", "--param", f"streamId={note}"])
    assert started.exit_code == 0, started.output
    run_id = started.output.split(":")[0]
    monkeypatch.setattr(console.console, "width", 80)
    for command in ("runs", "events"):
        result = runner.invoke(app, [command, "--direct"])
        assert result.exit_code == 0, result.output
        assert run_id in result.output, result.output  # whole, on one line


def test_reload_and_sighup_serve_the_workflow_files_as_they_are_now(tmp_path: Path) -> None:
    """`vodflow reload` and SIGHUP read the workflow files of a running `vodflow serve` again
    (SIGHUP would otherwise end it). An invalid file changes nothing: the command prints the
    problem and exits 1."""
    folder = tmp_path / "workflows"
    folder.mkdir()
    shipped = (ROOT / "workflows" / "recording-transcode.yaml").read_text()
    (folder / "recording-transcode.yaml").write_text(shipped)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VODFLOW_")},
        "VODFLOW_DATA_DIR": str(tmp_path / "data"),
        "VODFLOW_PORT": str(port),
        "VODFLOW_WORKFLOWS": str(folder),
    }
    vodflow = [sys.executable, "-m", "orchestrator.cli"]

    def reload() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*vodflow, "reload"], env=env, capture_output=True, text=True, timeout=60
        )

    alone = reload()
    assert alone.returncode == 1
    assert f"no server answers at http://127.0.0.1:{port}" in alone.stderr
    subprocess.run([*vodflow, "db", "upgrade"], env=env, check=True, capture_output=True)
    server = _started(env)
    try:
        done = reload()
        assert (done.returncode, done.stdout) == (0, "unchanged: recording-transcode\n")

        (folder / "broken.yaml").write_text("name: broken\nsteps: nope\n")
        refused = reload()
        assert refused.returncode == 1
        assert "the workflows were not reloaded (nothing changed)" in refused.stderr
        assert f"{folder / 'broken.yaml'}:" in refused.stderr
        as_json = subprocess.run(
            [*vodflow, "reload", "--json"], env=env, capture_output=True, text=True, timeout=60
        )
        assert as_json.returncode == 1
        problems = json.loads(as_json.stdout)["problems"]
        assert [(p["file"], p["path"]) for p in problems] == [
            (str(folder / "broken.yaml"), "triggers"),
            (str(folder / "broken.yaml"), "steps"),
        ]

        (folder / "broken.yaml").unlink()
        renamed = shipped.replace("name: recording-transcode", "name: copy")
        (folder / "copy.yaml").write_text(renamed)
        server.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while True:
            answer = httpx.get(f"http://127.0.0.1:{port}/api/workflows", timeout=5)
            names = [w["name"] for w in answer.json()["workflows"]]
            if names == ["copy", "recording-transcode"]:
                break
            assert server.poll() is None, "SIGHUP ended the server"
            assert time.monotonic() < deadline, names
            time.sleep(0.1)
    finally:
        server.terminate()
        output, _ = server.communicate(timeout=15)
    assert "workflow copy added" in output


def test_piped_output_keeps_a_row_and_a_message_on_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Piped into a file or grep there is no width to fit (rich would assume 80 columns and
    fold 'succeeded' and URLs over lines): a table row stays one line, a message too."""
    import io

    from rich.console import Console
    from rich.table import Table

    from orchestrator.console import print_table

    monkeypatch.delenv("COLUMNS", raising=False)
    error = "step hls failed: file_not_found (code 10008): " + "ProcessFileByProcedure " * 4
    table = Table("run", "workflow", "status", "error")
    table.add_row("run_01a232a5e30c8eae5aa366", "recording-transcode", "succeeded", error)
    out = io.StringIO()
    piped = Console(file=out, soft_wrap=True)
    assert not piped.is_terminal
    print_table(table, piped)
    piped.print("stored: http://127.0.0.1:8080/files/" + "x" * 90 + "/f20.mp4")
    lines = out.getvalue().splitlines()
    (row,) = [line for line in lines if "run_01a232a5e30c8eae5aa366" in line]
    assert "succeeded" in row
    assert error.strip() in row
    assert lines[-1].endswith("/f20.mp4")
    assert lines[-1].startswith("stored: http://")
