"""Small SQL helpers that differ between SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

_IGNORING: dict[tuple[str, str, tuple[str, ...]], sqlite.Insert | postgresql.Insert] = {}


def insert_ignore(
    conn: sa.Connection | AsyncConnection, table: sa.Table, conflict: list[str]
) -> sqlite.Insert | postgresql.Insert:
    """``INSERT ... ON CONFLICT (conflict) DO NOTHING`` for the dialect (built once)."""
    key = (conn.dialect.name, table.name, tuple(conflict))
    statement = _IGNORING.get(key)
    if statement is None:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(table).on_conflict_do_nothing(index_elements=conflict)
        _IGNORING[key] = statement
    return statement


def insert_or_update(
    conn: sa.Connection, table: sa.Table, conflict: list[str], update: list[str]
) -> sqlite.Insert | postgresql.Insert:
    """``INSERT ... ON CONFLICT (conflict) DO UPDATE SET`` the ``update`` columns to the values
    being inserted, for the dialect."""
    statement: sqlite.Insert | postgresql.Insert = (
        postgresql.insert(table) if conn.dialect.name == "postgresql" else sqlite.insert(table)
    )
    values = {c: statement.excluded[c] for c in update}
    return statement.on_conflict_do_update(index_elements=conflict, set_=values)


def lit(value: str) -> sa.BindParameter[str]:
    """A status rendered into the SQL text, not bound: a partial index ``WHERE status = 'x'``
    is only usable by a plan that sees the literal (PostgreSQL's cached generic plans don't)."""
    return sa.literal(value, literal_execute=True)
