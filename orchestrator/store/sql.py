"""Small SQL helpers that differ between SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection


def insert_ignore(
    conn: AsyncConnection | sa.Connection, table: sa.Table, conflict: list[str]
) -> sqlite.Insert | postgresql.Insert:
    """``INSERT ... ON CONFLICT (conflict) DO NOTHING`` for the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=conflict)
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=conflict)
