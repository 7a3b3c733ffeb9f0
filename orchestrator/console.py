"""Operators' commands: `vodflow runs`, `run show`, `retry`, `cancel`, `events`, `event replay`,
`timers`, `timer replay`, `reload`.

They speak the dashboard API. By default they ask the running server (``VODFLOW_PUBLIC_URL`` or
HOST:PORT, with ``VODFLOW_API_TOKEN``); when none answers, or with ``--direct``, the same API runs
in this process against the database, so the answers are the same either way. Tables for people
(rich), ``--json`` for scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Annotated, Any

import httpx
import typer
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator.config import Settings
from orchestrator.durations import format_duration

# Messages are not broken at the width: a terminal wraps them itself, and piped output (80
# columns to rich) keeps each message, and each URL in it, on one line.
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
Direct = Annotated[
    bool, typer.Option("--direct", help="Use the database directly, not the running server.")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
Cursor = Annotated[str | None, typer.Option(help="The next page: nextCursor of a --json answer.")]


@asynccontextmanager
async def api(
    settings: Settings, direct: bool, *, server_only: bool = False
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the dashboard API: the running server's, or (``direct``, or when none
    answers) this process's against the database. ``server_only``: the running server's or
    exit 1 (for what only a server can do, such as reloading its workflows)."""
    headers = {"x-vodflow-actor": "cli"}
    token = settings.api_token or settings.api_read_token  # read-only: the reading commands
    if token is not None:
        headers["Authorization"] = f"Bearer {token.get_secret_value()}"
    if not direct:
        client = httpx.AsyncClient(base_url=settings.base_url, headers=headers, timeout=30)
        try:
            await client.get("/healthz")
        except httpx.TransportError:
            await client.aclose()
            if server_only:
                err.print(f"vodflow: no server answers at {settings.base_url}", highlight=False)
                raise typer.Exit(1) from None
            err.print(f"[dim]no server at {settings.base_url}; using the database directly[/]")
        else:
            try:
                yield client
            finally:
                await client.aclose()
            return
    from orchestrator.app import create_app

    exit_unless_migrated(settings)
    # Called in this process only: nothing listens, whatever VODFLOW_HOST says.
    app = create_app(settings.model_copy(update={"engine": False}), listening=False)
    services = app.state.services
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://vodflow", headers=headers, timeout=30
    ) as client:
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):  # a timer replay ran the timers job here
                await services.sweeper.forget()
            await services.db.close()


def _call(
    settings: Settings,
    direct: bool,
    method: str,
    path: str,
    *,
    server_only: bool = False,
    errors_as_json: bool = False,
    **kw: Any,
) -> Any:
    """The API's answer; an error is printed (with ``errors_as_json``, the answer's JSON on
    standard output, for a script under ``--json``) and the command exits 1."""

    async def go() -> Any:
        async with api(settings, direct, server_only=server_only) as client:
            answer = await client.request(method, path, **kw)
        if answer.status_code >= 400:
            try:
                body = answer.json()
                detail = body.get("error", answer.text)
            except ValueError:
                body, detail = None, answer.text
            if errors_as_json and isinstance(body, dict):
                _print_json(body)
                raise typer.Exit(1)
            detail = _as_option(detail, kw.get("params") or {})
            err.print(f"vodflow: {detail}", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(1)
        return answer.json()

    return asyncio.run(go())


def _as_option(detail: str, params: dict[str, Any]) -> str:
    """The API's "query parameter fileId: ..." as the command's "--file-id: ...": the user gave
    an option, not a query parameter."""
    for name in params:
        api = f"query parameter {name}:"
        if detail.startswith(api):
            option = re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()
            return f"--{option}:{detail.removeprefix(api)}"
    return detail


IDS = ("run", "task", "id")
"""Columns of IDs people copy into other commands: never cut, never wrapped."""
NARROWEST = 6
"""Other columns fold down to this (or their header, if shorter) before an ID is touched."""


def output_lines(run: dict[str, Any]) -> list[str]:
    """What a run's steps made, one line each with its URL: files (clips, joins), videos,
    sprite indexes and sheets, snapshots, covers."""
    lines: list[str] = []
    for step in run["steps"]:
        outputs, name = step["outputs"] or {}, step["name"]
        for file in outputs.get("files", []):
            lines.append(f"{name}: file {file.get('fileId') or '-'} {file.get('url') or ''}")
        for play in outputs.get("play", []):
            size = f"{play.get('width')}x{play.get('height')} " if play.get("width") else ""
            lines.append(f"{name}: video {size}{play['url']}")
        for sprite in outputs.get("sprites", []):
            lines.append(f"{name}: sprite index {sprite.get('webVttUrl')}")
            lines.extend(f"{name}: sprite sheet {image}" for image in sprite.get("imageUrls", []))
        lines.extend(f"{name}: snapshot {shot['url']}" for shot in outputs.get("snapshots", []))
        if outputs.get("coverUrl"):
            lines.append(f"{name}: cover {outputs['coverUrl']}")
    return [line.rstrip() for line in lines]


def _has_width(out: Console) -> bool:
    """Whether the output has a width to fit: a terminal's, or COLUMNS. Piped output has none
    (rich assumes 80), so its tables are printed whole, a row on one line."""
    return out.is_terminal or "COLUMNS" in os.environ


ATTENTION = ("failing", "overdue")
"""The healths a listed run's detail is read for, to say why."""


def _details(settings: Settings, direct: bool, run_ids: list[str]) -> dict[str, Any]:
    """The details of these runs, in one session with the API; one it cannot give is left out
    (the list is still worth printing)."""

    async def go() -> dict[str, Any]:
        found: dict[str, Any] = {}
        with contextlib.suppress(Exception):  # the list is printed with what could be read
            async with api(settings, direct) as client:
                for run_id in run_ids:
                    with contextlib.suppress(httpx.HTTPError):
                        answer = await client.get(f"/api/runs/{run_id}")
                        if answer.status_code == 200:
                            found[run_id] = answer.json()
        return found

    return asyncio.run(go())


def _attention(health: str, detail: dict[str, Any] | None) -> str:
    """Why a run that is failing (its attempt's error) or overdue (the task late) needs
    attention, from its detail."""
    if detail is None:
        return ""
    steps = detail["steps"]
    if health == "overdue":
        late = next((t for s in steps for t in s["tasks"] if t["overdue"]), None)
        if late is not None:
            waited = format_duration(timedelta(seconds=late["waitedSeconds"]))
            expected = format_duration(timedelta(seconds=late["expectedSeconds"]))
            return (
                f"no callback for the {late['kind']} task after {waited} (expected within "
                f"{expected}); vodflow asks VOD about it"
            )
    step = next((s for s in steps if s["status"] == "retrying" or s["error"]), None)
    if health == "failing" and step is not None and step["error"]:
        return f"step {step['name']}, attempt {step['attempt']}: {step['error']}"
    return ""


def print_table(table: Table, out: Console | None = None) -> None:
    """Print a table with its ID columns whole, however narrow the terminal.

    Rich fits a table to the terminal by shortening every column, IDs too ("run_01a2…"). Here
    the ID columns keep their full width and the others fold (wrap onto more lines) to make
    room; when even that does not fit, the table is printed wider than the terminal, which
    wraps its lines (an ID still reads and copies whole)."""
    out = out or console
    overhead = 3 * len(table.columns) + 1  # borders and padding
    natural: list[int] = []
    fixed: list[bool] = []
    for column in table.columns:
        cells = [Text.from_markup(c) if isinstance(c, str) else c for c in column.cells]
        widths = [cell_len(str(column.header))] + [
            max((cell_len(line) for line in str(c).splitlines()), default=0) for c in cells
        ]
        natural.append(max(widths))
        fixed.append(str(column.header) in IDS)
    if sum(natural) + overhead <= out.width:
        out.print(table)
        return
    if not _has_width(out):
        _print_at(out, table, sum(natural) + overhead)
        return
    widths = list(natural)
    least = [
        w if keep else min(w, max(NARROWEST, cell_len(str(c.header))))
        for w, keep, c in zip(natural, fixed, table.columns, strict=True)
    ]
    budget = max(out.width, sum(least) + overhead) - overhead
    while sum(widths) > budget:  # take from the widest column that can still give
        n = max(
            (i for i, w in enumerate(widths) if w > least[i]), key=lambda i: widths[i] - least[i]
        )
        widths[n] -= 1
    for column, width, keep in zip(table.columns, widths, fixed, strict=True):
        column.width = width
        column.no_wrap = keep
        column.overflow = "ignore" if keep else "fold"
    _print_at(out, table, budget + overhead)


def _print_at(out: Console, table: Table, width: int) -> None:
    before = out.width
    out.width = width  # rich never prints wider than its console
    try:
        out.print(table, crop=False)
    finally:
        out.width = before


def _when(value: str | None) -> str:
    if not value:
        return "-"
    return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")


_COLOURS = {
    "succeeded": "green",
    "failed": "red",
    "failing": "red",
    "overdue": "yellow",
    "retrying": "yellow",
    "cancelled": "dim",
    "awaiting_callback": "cyan",
}


def _status(text: str) -> str:
    colour = _COLOURS.get(text)
    return f"[{colour}]{text}[/]" if colour else text


def register(app: typer.Typer, settings: Any) -> None:
    """Add the commands to the `vodflow` app; ``settings`` reads the settings when called."""

    def listing(path: str, direct: bool, as_json: bool, **params: Any) -> Any:
        """A page of ``path``, asked with the options given (those left out are not sent);
        None once ``--json`` printed it."""
        given = {name: value for name, value in params.items() if value not in (None, "")}
        page = _call(settings(), direct, "GET", path, params=given)
        if as_json:
            _print_json(page)
            return None
        return page

    @app.command("runs")
    def runs(
        status: Annotated[
            list[str] | None, typer.Option("--status", help="Only these statuses.")
        ] = None,
        workflow: Annotated[str | None, typer.Option(help="Only this workflow.")] = None,
        stream_id: Annotated[
            str | None, typer.Option("--stream-id", help="Only this stream's.")
        ] = None,
        file_id: Annotated[str | None, typer.Option("--file-id", help="Only this file's.")] = None,
        since: Annotated[
            str | None, typer.Option(help="Created at or after (ISO 8601; UTC without offset).")
        ] = None,
        until: Annotated[str | None, typer.Option(help="Created before (ISO 8601).")] = None,
        cursor: Cursor = None,
        limit: int = 50,
        direct: Direct = False,
        as_json: AsJson = False,
    ) -> None:
        """Runs, newest first."""
        page = listing(
            "/api/runs",
            direct,
            as_json,
            limit=limit,
            status=status or [],
            workflow=workflow,
            streamId=stream_id,
            fileId=file_id,
            since=since,
            until=until,
            cursor=cursor,
        )
        if page is None:
            return
        table = Table("run", "workflow", "status", "step", "stream / file", "created", "error")
        # The list says too little about a run that needs attention: its detail says why (as
        # the dashboard's list does).
        attention = [r["id"] for r in page["runs"] if not r["error"] and r["health"] in ATTENTION]
        details = _details(settings(), direct, attention) if attention else {}
        for run in page["runs"]:
            detail = details.get(run["id"])
            table.add_row(
                run["id"],
                run["workflow"],
                _status(run["health"]),
                run["currentStep"] or "-",
                run["streamId"] or run["fileId"] or "-",
                _when(run["createdAt"]),
                _brief(run["error"] or _attention(run["health"], detail)),
            )
        print_table(table)

    run_app = typer.Typer(help="One run.", no_args_is_help=True)
    app.add_typer(run_app, name="run")

    @run_app.command("show")
    def show(run_id: str, direct: Direct = False, as_json: AsJson = False) -> None:
        """A run's steps, tasks, outputs, timeline, the callbacks it received and its timers."""
        run = _call(settings(), direct, "GET", f"/api/runs/{run_id}")
        if as_json:
            _print_json(run)
            return
        console.print(
            f"[bold]{run['id']}[/]  {run['workflow']} (version {run['version']})  "
            f"{_status(run['health'])}"
        )
        first = run["history"][0] if run["history"] else None
        if first is not None and first["input"] == "trigger" and first["detail"].get("event"):
            console.print(f"started by {first['detail']['event']}", highlight=False)
        if run["error"]:
            console.print(f"[red]{run['error']}[/]")
        steps = Table("step", "status", "attempt", "task", "kind", "task status", "waited")
        for step in run["steps"]:
            tasks = step["tasks"] or [None]
            for n, task in enumerate(tasks):
                steps.add_row(
                    step["name"] if n == 0 else "",
                    _status(step["status"]) if n == 0 else "",
                    str(step["attempt"]) if n == 0 else "",
                    task["taskId"] if task else "-",
                    task["kind"] if task else "",
                    (_status(task["status"]) + (" [yellow](overdue)[/]" if task["overdue"] else ""))
                    if task
                    else "",
                    f"{task['waitedSeconds']:.0f}s / {task['expectedSeconds']:.0f}s"
                    if task
                    else "",
                )
        print_table(steps)
        outputs = output_lines(run)
        if outputs:
            console.print("outputs:", highlight=False)
            for line in outputs:
                console.print(f"  {line}", highlight=False)
        timeline = Table("at", "input", "step", "status", "reason")
        for entry in run["history"]:
            change = entry["fromStatus"]
            if entry["toStatus"] != entry["fromStatus"]:
                change += f" → {entry['toStatus']}"
            timeline.add_row(
                _when(entry["at"]), entry["input"], entry["step"] or "-", change, entry["reason"]
            )
        print_table(timeline)
        if run["events"]:
            print_table(_event_table(run["events"]))
        waiting = [t for t in run["timers"] if t["status"] in ("pending", "failed")]
        if waiting:
            print_table(_timer_table(waiting))

    @app.command("retry")
    def retry(
        run_id: str,
        step: Annotated[str | None, typer.Option(help="Retry from this step.")] = None,
        direct: Direct = False,
    ) -> None:
        """Retry a failed or cancelled run (or a step waiting to retry) now. Exits 1 when the
        run cannot be retried now (the reason is printed)."""
        result = _call(settings(), direct, "POST", f"/api/runs/{run_id}/retry", json={"step": step})
        _print_action(result, done=bool(result["changed"]))

    @app.command("cancel")
    def cancel(
        run_id: str,
        reason: Annotated[str, typer.Option(help="Recorded in the run's history.")] = "",
        direct: Direct = False,
    ) -> None:
        """Cancel a run. Exits 1 when the run had already ended otherwise (succeeded or failed);
        cancelling a cancelled run again exits 0."""
        result = _call(
            settings(), direct, "POST", f"/api/runs/{run_id}/cancel", json={"reason": reason}
        )
        _print_action(result, done=result["status"] == "cancelled")

    @app.command("reload")
    def reload(as_json: AsJson = False) -> None:
        """Read the workflow files again in the running server (as SIGHUP does) and print what
        changed. Every file is checked first: when one is invalid nothing changes, each problem
        is printed, and the command exits 1 (as it does when no server answers)."""
        result = _call(
            settings(),
            False,
            "POST",
            "/api/workflows/reload",
            server_only=True,
            errors_as_json=as_json,
        )
        if as_json:
            _print_json(result)
            return
        for change in ("added", "changed", "removed", "unchanged"):
            if result[change]:
                console.print(f"{change}: {', '.join(result[change])}", highlight=False)
        if not any(result.values()):
            console.print("no workflows", highlight=False)

    @app.command("trigger")
    def trigger(
        workflow: str,
        param: Annotated[
            list[str] | None,
            typer.Option(
                "--param",
                metavar="KEY=VALUE",
                help="A trigger field (text); a key given again makes a list.",
            ),
        ] = None,
        params_json: Annotated[
            str | None, typer.Option("--params", metavar="JSON", help="Trigger fields as JSON.")
        ] = None,
        idempotency_key: Annotated[
            str | None, typer.Option(help="A repeat with this key answers the first run.")
        ] = None,
        direct: Direct = False,
    ) -> None:
        """Start a run of a workflow with a manual trigger (as POST /api/runs does)."""
        fields: dict[str, Any] = {}
        if params_json is not None:
            try:
                fields = json.loads(params_json)
            except ValueError as exc:
                err.print(f"vodflow: --params: not JSON: {exc}", highlight=False, markup=False)
                raise typer.Exit(1) from None
            if not isinstance(fields, dict):
                err.print("vodflow: --params: expected a JSON object", highlight=False)
                raise typer.Exit(1)
        pairs = [item.partition("=") for item in param or []]
        for key, sep, _ in pairs:
            if not sep or not key:
                err.print(f"vodflow: --param {key}: expected KEY=VALUE", highlight=False)
                raise typer.Exit(1)
        given: dict[str, list[str]] = {}
        for key, _, value in pairs:
            given.setdefault(key, []).append(value)
        fields.update({key: v if len(v) > 1 else v[0] for key, v in given.items()})
        body = {"workflow": workflow, "params": fields, "idempotencyKey": idempotency_key}
        result = _call(settings(), direct, "POST", "/api/runs", json=body)
        how = "started" if result["created"] else "already started with this idempotency key"
        console.print(f"{result['runId']}: {how}")

    @app.command("events")
    def events(
        orphans: Annotated[
            bool, typer.Option("--orphans", help="Events waiting for a task.")
        ] = False,
        invalid: Annotated[bool, typer.Option("--invalid", help="Refused bodies.")] = False,
        status: Annotated[list[str] | None, typer.Option("--status")] = None,
        run: Annotated[str | None, typer.Option("--run", help="Only this run's.")] = None,
        task: Annotated[
            str | None, typer.Option("--task", help="Only those about this VOD task ID.")
        ] = None,
        file: Annotated[
            str | None, typer.Option("--file", help="Only those about this fileId.")
        ] = None,
        limit: int = 50,
        direct: Direct = False,
        as_json: AsJson = False,
    ) -> None:
        """Inbox events, newest first: everything received, as received."""
        statuses = (
            list(status or []) + (["orphan"] if orphans else []) + (["invalid"] if invalid else [])
        )
        page = listing(
            "/api/inbox",
            direct,
            as_json,
            status=statuses,
            limit=limit,
            runId=run,
            taskId=task,
            fileId=file,
        )
        if page is None:
            return
        print_table(_event_table(page["events"], with_run=True))
        if not page["events"]:
            print("no events", file=sys.stderr)

    @app.command("timers")
    def timers(
        status: Annotated[
            list[str] | None,
            typer.Option("--status", help="Only these statuses (default: failed)."),
        ] = None,
        run: Annotated[str | None, typer.Option("--run", help="Only this run's.")] = None,
        limit: int = 50,
        direct: Direct = False,
        as_json: AsJson = False,
    ) -> None:
        """Timers, newest first; by default those that could not be applied (their runs wait
        until one is replayed with `vodflow timer replay`)."""
        page = listing(
            "/api/timers", direct, as_json, status=status or ["failed"], limit=limit, runId=run
        )
        if page is None:
            return
        print_table(_timer_table(page["timers"], with_run=True))
        if not page["timers"]:
            print("no timers", file=sys.stderr)

    @app.command("sessions")
    def sessions(
        status: Annotated[
            list[str] | None,
            typer.Option("--status", help="open, closed or cancelled (default: open)."),
        ] = None,
        workflow: Annotated[str | None, typer.Option("--workflow", help="Only its.")] = None,
        stream_id: Annotated[
            str | None, typer.Option("--stream-id", help="Only this stream's.")
        ] = None,
        cursor: Cursor = None,
        limit: int = 50,
        direct: Direct = False,
        as_json: AsJson = False,
    ) -> None:
        """stream.session windows, newest first: by default those still collecting a stream's
        recordings, with when each closes and starts its run."""
        page = listing(
            "/api/sessions",
            direct,
            as_json,
            status=status or ["open"],
            limit=limit,
            workflow=workflow,
            streamId=stream_id,
            cursor=cursor,
        )
        if page is None:
            return
        table = Table("id", "workflow", "stream", "status", "recordings", "opened", "closes / run")
        for session in page["sessions"]:
            table.add_row(
                str(session["id"]),
                session["workflow"],
                session["streamId"],
                _status(session["status"]),
                str(len(session["segments"])),
                _when(session["openedAt"]),
                _session_end(session),
            )
        if not page["sessions"]:
            print("no sessions", file=sys.stderr)
            return
        print_table(table)
        if page["nextCursor"]:
            print(f"more: --cursor {page['nextCursor']}", file=sys.stderr)

    event_app = typer.Typer(help="One inbox event.", no_args_is_help=True)
    app.add_typer(event_app, name="event")

    @event_app.command("replay")
    def replay_event(event_id: int, direct: Direct = False) -> None:
        """Make an inbox event pending again, for the runner to apply (a failed one, once its
        cause is fixed; orphan, unmatched, late and ignored ones too). Exits 1 for an applied,
        invalid or pending event, saying why."""
        result = _call(settings(), direct, "POST", f"/api/inbox/{event_id}/replay")
        console.print(
            f"event {event_id}: " + ("pending again" if result["replayed"] else "nothing to do")
        )

    timer_app = typer.Typer(help="One timer.", no_args_is_help=True)
    app.add_typer(timer_app, name="timer")

    @timer_app.command("replay")
    def replay(timer_id: int, direct: Direct = False) -> None:
        """Fire a failed timer again now (once its cause is fixed). Exits 1 if it fails again."""
        result = _call(settings(), direct, "POST", f"/api/timers/{timer_id}/replay")
        timer = result["timer"]
        if timer["status"] == "failed":
            err.print(f"timer {timer_id} of run {timer['runId']} failed again: {timer['error']}")
            raise typer.Exit(1)
        console.print(f"timer {timer_id} of run {timer['runId']}: {timer['status']}")

    session_app = typer.Typer(help="One stream session.", no_args_is_help=True)
    app.add_typer(session_app, name="session")

    @session_app.command("cancel")
    def cancel_session(session_id: int, direct: Direct = False) -> None:
        """Cancel an open stream session: the recordings it collected start no run. Exits 1
        when it has closed (its run started: cancel the run instead)."""
        result = _call(settings(), direct, "POST", f"/api/sessions/{session_id}/cancel")
        session = result["session"]
        what = "cancelled" if result["changed"] else "already cancelled"
        console.print(
            f"session {session_id} ({session['workflow']}, stream {session['streamId']}, "
            f"{len(session['segments'])} recording(s)): {what}",
            highlight=False,
        )


def _print_action(result: dict[str, Any], *, done: bool) -> None:
    """An operator's action's answer; exit 1 when the run is not as asked (a script must not
    take an ignored retry or cancel for one that happened)."""
    line = f"{result['runId']}: {_status(result['status'])} — {result['reason']}"
    if done:
        console.print(line)
        return
    err.print(line)
    raise typer.Exit(1)


def exit_unless_migrated(settings: Settings) -> None:
    """Exit 1 saying to run `vodflow db upgrade` unless the database is at this code's schema:
    before serving, or before a command reads it directly."""
    from orchestrator.store import migrate

    try:
        migrate.require_head(settings.sqlalchemy_url)
    except (migrate.SchemaNotCurrent, migrate.DatabaseUnavailable) as exc:
        err.print(f"vodflow: {exc}", highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1) from None


def _print_json(value: Any) -> None:
    """What ``--json`` prints: the API's answer as it came, indented."""
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _session_end(session: dict[str, Any]) -> str:
    """When an open session closes; the run a closed one started; nothing for a cancelled one."""
    if session["status"] == "open":
        return _when(session["closesAt"])
    return str(session["runId"] or "-")


def _event_table(events: list[dict[str, Any]], *, with_run: bool = False) -> Table:
    table = Table(
        "id", "received", "source", "type", "status", "task", *(["run"] if with_run else []), "note"
    )
    for event in events:
        table.add_row(
            str(event["id"]),
            _when(event["receivedAt"]),
            event["source"],
            event["eventType"],
            event["status"],
            event["taskId"] or "-",
            *([event["runId"] or "-"] if with_run else []),
            _brief(event["note"]),
        )
    return table


def _timer_table(timers: list[dict[str, Any]], *, with_run: bool = False) -> Table:
    table = Table("id", *(["run"] if with_run else []), "due", "timer", "status", "error")
    for t in timers:
        what = t["kind"]
        if t["step"]:  # a retry timer carries the attempt that failed, the others their own
            of = "after attempt" if t["kind"] == "retry" else "attempt"
            what = f"{t['kind']} {t['step']} ({of} {t['attempt']})"
        table.add_row(
            str(t["id"]),
            *([t["runId"]] if with_run else []),
            _when(t["dueAt"]),
            what,
            _status(t["status"]),
            t["error"] or "",
        )
    return table


def _brief(text: str | None, most: int = 240) -> str:
    """A table cell's text (the table folds it onto more lines), with an ellipsis past
    ``most`` characters: the full text is in ``--json`` and ``run show``."""
    text = text or ""
    return text if len(text) <= most else text[: most - 1] + "…"
