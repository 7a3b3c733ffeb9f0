"""The workflows this process knows: the current files, and every version a run started with.

A run keeps the version it started with, so editing a workflow file never changes a run in
flight. Each version's source is stored by content hash; a version that is no longer on disk is
parsed again from the database when a run of it advances.

When VOD is this vodflow's embedded engine, every procedure a workflow names is known at load (the
engine's procedures file), so the files are checked against it; an older version parsed again
from the database is not (its runs started, and VOD answers for a procedure since removed).

The files are read again on a reload (``vodflow reload``, ``POST /api/workflows/reload``, or
SIGHUP): all of them, checked as at start. When any is invalid nothing changes; otherwise the
new set replaces the old whole, and runs in flight keep their versions.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from orchestrator.config import Settings
from orchestrator.spec import (
    KnownProcedures,
    LoadedWorkflow,
    Workflow,
    load_workflows,
    parse_workflow,
)
from orchestrator.store.db import Database
from orchestrator.store.sql import insert_or_update
from orchestrator.store.tables import WorkflowVersion

versions = WorkflowVersion.__table__  # type: ignore[attr-defined]
log = logging.getLogger("vodflow.workflows")


def known_procedures(settings: Settings) -> KnownProcedures | None:
    """The procedures workflows may name when VOD is this vodflow's embedded engine: those of the
    engine's procedures file (``ProceduresError`` when that file is invalid, which the engine
    refuses too). None when VOD is elsewhere: Tencent Cloud's procedures live in the customer's
    account, so a name is left to VOD to answer when a step runs."""
    if not settings.uses_embedded_engine:
        return None
    from orchestrator.engine.procedures import load_procedures

    procedures = load_procedures(settings.engine_procedures)
    source = "the embedded engine's built-in procedures file"
    if settings.engine_procedures is not None:
        source = f"the embedded engine's procedures file {settings.engine_procedures}"
    return KnownProcedures(frozenset(procedures.procedures), source)


@dataclass(frozen=True)
class Reloaded:
    """What a reload changed, by workflow name."""

    added: list[str]
    changed: list[str]
    removed: list[str]
    unchanged: list[str]


@dataclass
class Registry:
    current: dict[str, LoadedWorkflow]
    _by_version: dict[str, Workflow] = field(default_factory=dict)
    paths: list[Path] = field(default_factory=list)
    """Where the workflows were loaded from (read again on a reload)."""
    procedures: KnownProcedures | None = None
    """The procedures they were checked against (the same on a reload: the engine does not
    read its procedures file again)."""
    _reloading: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def from_paths(cls, paths: list[Path], procedures: KnownProcedures | None = None) -> Registry:
        """Load and validate workflow files; raises WorkflowError listing every problem (with
        ``procedures``, each procedure name it does not define among them)."""
        loaded = load_workflows(paths, procedures)
        return cls(
            current={w.spec.name: w for w in loaded}, paths=list(paths), procedures=procedures
        )

    def read_again(self) -> Registry:
        """The workflows as their files say now, checked as at start (WorkflowError listing
        every problem). Blocking: it reads the files."""
        return Registry.from_paths(self.paths, self.procedures)

    async def reload(self, db: Database) -> Reloaded:
        """Read the files again, record the versions and serve them; WorkflowError (listing
        every problem) when any file is invalid, and then nothing changes. One reload at a
        time."""
        async with self._reloading:
            fresh = await asyncio.to_thread(self.read_again)
            await db.write(fresh.record_versions, datetime.now(UTC))
            reloaded = self.adopt(fresh)
        for name in reloaded.added:
            log.info("workflow %s added (version %s)", name, self.current[name].version)
        for name in reloaded.changed:
            log.info("workflow %s changed (version %s)", name, self.current[name].version)
        for name in reloaded.removed:
            log.info("workflow %s removed: its runs in flight go on", name)
        return reloaded

    def adopt(self, fresh: Registry) -> Reloaded:
        """Serve ``fresh``'s workflows from now on (record its versions first). The set is
        replaced with one assignment, so a reader on another thread (the database writer's)
        sees the old set or the new one, never a mix."""
        old = self.current
        self._by_version.update(fresh._by_version)
        self.current = dict(fresh.current)
        new = self.current
        return Reloaded(
            added=sorted(new.keys() - old.keys()),
            changed=sorted(n for n in new.keys() & old.keys() if new[n].version != old[n].version),
            removed=sorted(old.keys() - new.keys()),
            unchanged=sorted(
                n for n in new.keys() & old.keys() if new[n].version == old[n].version
            ),
        )

    @classmethod
    def for_settings(cls, settings: Settings) -> Registry:
        """The workflows a server with these settings runs: ``settings.workflows``, with their
        procedure names checked when VOD is the embedded engine. Raises WorkflowError, or
        ProceduresError when the engine's procedures file is invalid."""
        return cls.from_paths([settings.workflows], known_procedures(settings))

    def __post_init__(self) -> None:
        for item in self.current.values():
            self._by_version[item.version] = item.spec

    def all(self) -> list[LoadedWorkflow]:
        return sorted(self.current.values(), key=lambda w: w.spec.name)

    def record_versions(self, conn: sa.Connection, now: datetime) -> None:
        """Record the versions loaded now; one loaded before (a revert) is marked loaded now
        again, so ``last_loaded`` finds it."""
        for item in self.current.values():
            conn.execute(
                insert_or_update(conn, versions, ["version"], ["loaded_at"]).values(
                    version=item.version,
                    name=item.spec.name,
                    path=str(item.path),
                    source=item.source,
                    loaded_at=now,
                )
            )

    def last_loaded(self, conn: sa.Connection, name: str) -> LoadedWorkflow | None:
        """The version of workflow ``name`` loaded most recently (by the last start that loaded
        it), from the database: for a stream session that opened under a workflow no longer on
        disk."""
        row = (
            conn.execute(
                sa.select(versions)
                .where(versions.c.name == name)
                .order_by(versions.c.loaded_at.desc(), versions.c.version)
                .limit(1)
            )
            .mappings()
            .first()
        )
        return None if row is None else self.loaded(conn, row["version"])

    def loaded(self, conn: sa.Connection, version: str) -> LoadedWorkflow | None:
        """Workflow ``version`` as loaded now, or as recorded in the database when it was."""
        for item in self.current.values():
            if item.version == version:
                return item
        row = (
            conn.execute(sa.select(versions).where(versions.c.version == version))
            .mappings()
            .first()
        )
        if row is None:
            return None
        spec = self.spec_for(conn, version)
        return LoadedWorkflow(
            spec=spec, path=Path(row["path"]), source=row["source"], version=version
        )

    def spec_for(self, conn: sa.Connection, version: str) -> Workflow:
        spec = self._by_version.get(version)
        if spec is not None:
            return spec
        row = (
            (conn.execute(sa.select(versions).where(versions.c.version == version)))
            .mappings()
            .first()
        )
        if row is None:
            raise LookupError(f"workflow version {version} is not in the database")
        spec = parse_workflow(row["source"], row["path"], stored=True)
        self._by_version[version] = spec
        return spec
