"""The `vodflow` command."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from orchestrator import __version__, console
from orchestrator.config import Settings, SettingsError, load_settings
from orchestrator.spec import WorkflowError, json_schema, load_workflows

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import FrameType

    from starlette.types import ASGIApp

    from orchestrator.engine import Engine

app = typer.Typer(
    name="vodflow",
    help="Turns 'a live recording finished' into finished media through Tencent Cloud VOD.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The database: migrations.", no_args_is_help=True)
app.add_typer(db_app, name="db")


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        typer.echo(f"vodflow: {exc}", err=True)
        raise typer.Exit(2) from None


def _print_version(given: bool) -> None:
    if given:
        typer.echo(f"vodflow {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the version and exit.",
            callback=_print_version,
            is_eager=True,  # before the check that a command was given
        ),
    ] = False,
) -> None:
    pass


@app.command()
def schema() -> None:
    """Print the workflow files' JSON Schema (for editors' autocompletion)."""
    typer.echo(json.dumps(json_schema(), indent=2))


@app.command()
def validate(
    paths: Annotated[list[Path], typer.Argument(help="Workflow files or directories.")],
    dry_run: Annotated[
        Path | None,
        typer.Option(
            "--dry-run",
            metavar="EVENT.json",
            help="An event body (VOD or live-service callback): show which workflows it "
            "starts and the exact ProcessFileByProcedure parameters each step would send.",
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the result as JSON (the workflows, or every problem with its file, "
            "line, column and path) for editors and CI.",
        ),
    ] = False,
) -> None:
    """Check workflow files; print every problem as file:line:column.

    When the settings make VOD this vodflow's embedded engine, procedure names are checked
    against the engine's procedures; on another VOD (Tencent Cloud) they are left to it."""
    from dataclasses import asdict

    from orchestrator.engine.procedures import ProceduresError
    from orchestrator.registry import known_procedures

    try:
        loaded = load_workflows(paths, known_procedures(_settings()))
    except ProceduresError as exc:
        typer.echo(f"vodflow: {exc}", err=True)
        raise typer.Exit(2) from None
    except WorkflowError as exc:
        if as_json:
            typer.echo(json.dumps({"problems": [asdict(p) for p in exc.problems]}, indent=2))
            raise typer.Exit(1) from None
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        count = len(exc.problems)
        typer.echo(f"{count} problem{'' if count == 1 else 's'} found", err=True)
        raise typer.Exit(1) from None
    if not loaded:
        where = ", ".join(str(p) for p in paths)
        typer.echo(f"vodflow: no workflow files (*.yaml, *.yml) in {where}", err=True)
        raise typer.Exit(1)
    if dry_run is not None:
        from orchestrator.dryrun import DryRunError, dry_run_event

        try:
            typer.echo(dry_run_event(dry_run, loaded))
        except DryRunError as exc:
            typer.echo(f"vodflow: {exc}", err=True)
            raise typer.Exit(1) from None
        return
    if as_json and dry_run is None:
        found = [
            {"path": str(item.path), "name": item.spec.name, "version": item.version}
            for item in loaded
        ]
        typer.echo(json.dumps({"workflows": found, "problems": []}, indent=2))
        return
    for item in loaded:
        typer.echo(f"ok  {item.path}  ({item.spec.name}, version {item.version})")


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply the database migrations (creates the SQLite file when needed)."""
    from orchestrator.store import migrate

    settings = _settings()
    url = settings.sqlalchemy_url
    with _database_opens():
        before = migrate.database_revisions(url)
        migrate.upgrade(url, revision)
        after = migrate.database_revisions(url)
    if not before:
        done = f"database created at {revision}"
    elif before == after:
        done = f"database already at {revision}"
    else:
        done = f"database migrated from {', '.join(sorted(before))} to {revision}"
    typer.echo(f"{done}: {migrate.redact(url)}")


@db_app.command("current")
def db_current() -> None:
    """Show the database's migration revision."""
    from orchestrator.store import migrate

    with _database_opens():
        migrate.current(_settings().sqlalchemy_url)


@contextlib.contextmanager
def _database_opens() -> Iterator[None]:
    """A database that cannot be opened (not running, no such database) stops the command with
    one line naming it and the driver's reason, exit status 1."""
    from orchestrator.store import migrate

    try:
        yield
    except migrate.DatabaseUnavailable as exc:
        typer.echo(f"vodflow: {exc}", err=True)
        raise typer.Exit(1) from None


def _run_server(application: ASGIApp, settings: Settings) -> None:
    """Serve on HOST:PORT until stopped. A stopping server first ends the dashboards' live
    streams (/api/events, which would otherwise stay open until cancelled) and has the embedded
    engine start no more callbacks (its own receiver is about to stop listening), then waits at
    most 5 s for open requests: a client may hold a media download; without a bound, stopping
    would wait for each of them to close."""
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            application,
            host=settings.host,
            port=settings.port,
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
    )
    services = getattr(getattr(application, "state", None), "services", None)
    handle_exit = server.handle_exit

    def stopping(sig: int, frame: FrameType | None) -> None:
        if services is not None:
            services.live.end_streams()
            if services.engine is not None:
                services.engine.quiesce()
        handle_exit(sig, frame)

    server.handle_exit = stopping  # type: ignore[method-assign]
    server.run()


@app.command()
def serve() -> None:
    """Run the service: callbacks, runner, sweeper, dashboard (and the embedded VOD engine)."""
    from orchestrator import logs
    from orchestrator.app import UnsafeBinding, create_app
    from orchestrator.engine.procedures import ProceduresError
    from orchestrator.registry import Registry

    settings = _settings()
    console.exit_unless_migrated(settings)
    logs.configure(settings.log_level, settings.log_format)
    try:
        application = create_app(settings, Registry.for_settings(settings))
    except WorkflowError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    except (ProceduresError, UnsafeBinding) as exc:
        typer.echo(f"vodflow: {exc}", err=True)
        raise typer.Exit(2) from None
    _claim_engine(application.state.services.engine)
    typer.echo(f"vodflow {__version__}: dashboard at {settings.base_url}/")
    _run_server(application, settings)


def _claim_engine(engine: Engine | None) -> None:
    """Claim the database for the embedded engine before serving: a second engine on it stops
    here with one line naming the first (see ``orchestrator.engine.claim``)."""
    from orchestrator.engine.claim import EngineTaken

    if engine is None or engine.claim is None:
        return
    try:
        engine.claim.take_before_serving()
    except EngineTaken as exc:
        typer.echo(f"vodflow: {exc}", err=True)
        raise typer.Exit(2) from None


vod_app = typer.Typer(help="The VOD service vodflow talks to.", no_args_is_help=True)
app.add_typer(vod_app, name="vod")
engine_app = typer.Typer(help="The embedded VOD engine.", no_args_is_help=True)
app.add_typer(engine_app, name="engine")


def _unix_time(text: str | None, option: str) -> int | None:
    """Unix seconds from ``1763632800`` or an ISO 8601 time (``2026-11-20T10:00:00+08:00``)."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: expected Unix seconds or an ISO 8601 time", param_hint=option
        ) from None
    return int((moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp())


@vod_app.command("upload")
def vod_upload(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The media file.")],
    stream_id: Annotated[
        str | None, typer.Option("--stream-id", help="Register it as a recording of this stream.")
    ] = None,
    record_start: Annotated[
        str | None,
        typer.Option("--record-start", help="When the recording started (Unix seconds or ISO)."),
    ] = None,
    record_end: Annotated[
        str | None,
        typer.Option("--record-end", help="When the recording ended (Unix seconds or ISO)."),
    ] = None,
    announce: Annotated[
        bool,
        typer.Option(
            help="For a recording, send this vodflow the live service's recording callback "
            "with its recording times, as the live service would."
        ),
    ] = True,
) -> None:
    """Upload a file to the embedded engine; prints fileId=<id>.

    A recording (--stream-id) is also announced to this vodflow (VODFLOW_PUBLIC_URL) with the
    live service's recording callback, which carries the recording times that VOD's
    NewFileUpload lacks and that a stream session's window is made of."""
    import asyncio

    from orchestrator.demo import AnnounceError, announce_recording
    from orchestrator.engine.upload import upload_file
    from orchestrator.keys import load_keys
    from orchestrator.vod.errors import VodError

    settings = _settings()
    keys = load_keys(settings)
    try:
        uploaded = asyncio.run(
            upload_file(
                file,
                endpoint=settings.vod_url,
                secret_id=keys.vod_secret_id,
                secret_key=keys.vod_secret_key,
                algorithm=settings.vod_signature_method,
                stream_id=stream_id,
                record_start=_unix_time(record_start, "--record-start"),
                record_end=_unix_time(record_end, "--record-end"),
            )
        )
    except VodError as exc:
        typer.echo(f"vodflow: upload of {file} failed: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"fileId={uploaded.file_id}")
    typer.echo(f"fileUrl={uploaded.file_url}")
    if uploaded.stream_id is None or not announce:
        return
    try:
        url = asyncio.run(announce_recording(settings, uploaded))
    except AnnounceError as exc:
        typer.echo(
            f"vodflow: {file} is stored as {uploaded.file_id}, but announcing it as a recording "
            f"of {uploaded.stream_id} failed: {exc} (is vodflow serving there? --no-announce "
            "skips this)",
            err=True,
        )
        raise typer.Exit(1) from None
    typer.echo(
        f"announced to {url}: recording of {uploaded.stream_id} "
        f"from {uploaded.record_start} to {uploaded.record_end}",
        err=True,
    )


@engine_app.command("serve")
def engine_serve() -> None:
    """Run the embedded VOD engine alone (its API, uploads and files) on HOST:PORT."""
    from orchestrator import logs
    from orchestrator.engine import create_engine_app
    from orchestrator.engine.procedures import ProceduresError
    from orchestrator.store import migrate

    settings = _settings()
    logs.configure(settings.log_level, settings.log_format)
    with _database_opens():
        migrate.upgrade(settings.sqlalchemy_url)
    try:
        application = create_engine_app(settings)
    except ProceduresError as exc:
        typer.echo(f"vodflow: {exc}", err=True)
        raise typer.Exit(2) from None
    _claim_engine(application.state.engine)
    typer.echo(f"vodflow {__version__}: VOD engine at {settings.base_url}/v2/index.php")
    _run_server(application, settings)


console.register(app, _settings)


@app.command()
def demo(
    seconds: Annotated[float, typer.Option(help="Length of the test recording.")] = 20.0,
) -> None:
    """Send a test recording through the running service and watch it become outputs."""
    import asyncio

    from orchestrator.demo import DemoError, run_demo

    try:
        status = asyncio.run(run_demo(_settings(), seconds))
    except DemoError as exc:
        typer.echo(f"vodflow: {exc}", err=True)
        raise typer.Exit(1) from None
    if status != "succeeded":
        raise typer.Exit(1)


def main() -> None:
    app(prog_name="vodflow")


if __name__ == "__main__":
    main()
