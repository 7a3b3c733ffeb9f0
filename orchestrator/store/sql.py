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


def lit(value: str) -> sa.BindParameter[str]:
    """A status rendered into the SQL text, not bound: a partial index ``WHERE status = 'x'``
    is only usable by a plan that sees the literal (PostgreSQL's cached generic plans don't)."""
    return sa.literal(value, literal_execute=True)
