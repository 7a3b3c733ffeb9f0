"""The workflows this process knows: the current files, and every version a run started with.

A run keeps the version it started with, so editing a workflow file never changes a run in
flight. Each version's source is stored by content hash; a version that is no longer on disk is
parsed again from the database when a run of it advances.

When VOD is this vodflow's embedded engine, every procedure a workflow names is known at load (the
engine's procedures file), so the files are checked against it; an older version parsed again
from the database is not (its runs started, and VOD answers for a procedure since removed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
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
from orchestrator.store.sql import insert_or_update
from orchestrator.store.tables import WorkflowVersion

versions = WorkflowVersion.__table__  # type: ignore[attr-defined]


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


@dataclass
class Registry:
    current: dict[str, LoadedWorkflow]
    _by_version: dict[str, Workflow] = field(default_factory=dict)

    @classmethod
    def from_paths(cls, paths: list[Path], procedures: KnownProcedures | None = None) -> Registry:
        """Load and validate workflow files; raises WorkflowError listing every problem (with
        ``procedures``, each procedure name it does not define among them)."""
        loaded = load_workflows(paths, procedures)
        return cls(current={w.spec.name: w for w in loaded})

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
        if row is None:
            return None
        spec = self.spec_for(conn, row["version"])
        return LoadedWorkflow(
            spec=spec, path=Path(row["path"]), source=row["source"], version=row["version"]
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
        spec = parse_workflow(row["source"], row["path"])
        self._by_version[version] = spec
        return spec
