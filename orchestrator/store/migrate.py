"""Running the Alembic migrations from vodflow itself (`vodflow db upgrade`, tests), and checking
that a database is at the revision this code needs before anything reads it."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from orchestrator.store.db import redact as redact  # shown in its messages, and by its callers
from orchestrator.store.db import sync_url

ROOT = Path(__file__).resolve().parents[2]


class SchemaNotCurrent(Exception):
    """The database's schema is not at this code's head revision; the message says what to do."""


class DatabaseUnavailable(Exception):
    """The database cannot be opened (not running, no such database, refused); the message
    names it and gives the driver's reason."""


def _unavailable(url: str, exc: sa.exc.DBAPIError) -> DatabaseUnavailable:
    reason = " ".join(str(exc.orig).split())  # the driver's lines, as one
    return DatabaseUnavailable(f"cannot open the database {redact(url)}: {reason}")


def alembic_config(url: str) -> Config:
    ini = ROOT / "alembic.ini"
    if not ini.exists():
        raise FileNotFoundError(
            f"{ini} not found: vodflow's migrations live in the source checkout's alembic/ folder"
        )
    config = Config(str(ini))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def upgrade(url: str, revision: str = "head") -> None:
    try:
        command.upgrade(alembic_config(url), revision)
    except sa.exc.OperationalError as exc:
        raise _unavailable(url, exc) from None


def current(url: str) -> None:
    try:
        command.current(alembic_config(url), verbose=False)
    except sa.exc.OperationalError as exc:
        raise _unavailable(url, exc) from None


def database_revisions(url: str) -> set[str]:
    """The revisions the database is at (empty: never migrated). A SQLite file that does not
    exist is not created to find out."""
    parsed = sync_url(url)
    file = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if file not in (None, "", ":memory:") and not Path(str(file)).exists():
        return set()
    engine = sa.create_engine(parsed, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return set(MigrationContext.configure(conn).get_current_heads())
    except sa.exc.OperationalError as exc:
        raise _unavailable(url, exc) from None
    finally:
        engine.dispose()


def require_head(url: str) -> None:
    """Raise SchemaNotCurrent unless the database is at this code's head revision."""
    script = ScriptDirectory.from_config(alembic_config(url))
    heads = set(script.get_heads())
    found = database_revisions(url)
    if found == heads:
        return
    where = f"the database {redact(url)}"
    need = ", ".join(sorted(heads))
    known = {revision.revision for revision in script.walk_revisions()}
    unknown = sorted(found - known)
    if unknown:
        raise SchemaNotCurrent(
            f"{where} is at revision {', '.join(unknown)}, which this vodflow does not know "
            f"(it needs {need}): a newer vodflow migrated it; run that version"
        )
    at = ", ".join(sorted(found)) if found else "none: no tables yet"
    raise SchemaNotCurrent(
        f"{where} is not migrated (revision {at}; this vodflow needs {need}): "
        "run `vodflow db upgrade`"
    )
