"""The workflows this process knows: the current files, and every version a run started with.

A run keeps the version it started with, so editing a workflow file never changes a run in
flight. Each version's source is stored by content hash; a version that is no longer on disk is
parsed again from the database when a run of it advances.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from orchestrator.spec import LoadedWorkflow, Workflow, load_workflows, parse_workflow
from orchestrator.store.sql import insert_ignore
from orchestrator.store.tables import WorkflowVersion

versions = WorkflowVersion.__table__  # type: ignore[attr-defined]


@dataclass
class Registry:
    current: dict[str, LoadedWorkflow]
    _by_version: dict[str, Workflow] = field(default_factory=dict)

    @classmethod
    def from_paths(cls, paths: list[Path]) -> Registry:
        """Load and validate workflow files; raises WorkflowError listing every problem."""
        loaded = load_workflows(paths)
        return cls(current={w.spec.name: w for w in loaded})

    def __post_init__(self) -> None:
        for item in self.current.values():
            self._by_version[item.version] = item.spec

    def all(self) -> list[LoadedWorkflow]:
        return sorted(self.current.values(), key=lambda w: w.spec.name)

    def record_versions(self, conn: sa.Connection, now: datetime) -> None:
        for item in self.current.values():
            conn.execute(
                insert_ignore(conn, versions, ["version"]).values(
                    version=item.version,
                    name=item.spec.name,
                    path=str(item.path),
                    source=item.source,
                    loaded_at=now,
                )
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
