"""Claims: roles only one process on the database may hold, as leased rows.

The lease works as the outbox's and the engine tasks' do (``lease_owner`` + ``lease_until``,
renewed by the holder's heartbeat): a holder that stops renewing (killed, or cut off from the
database) loses the claim once its lease runs out, and anyone may take it then. Each statement
decides on its own row in one step, so two processes claiming at once cannot both win.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa

from orchestrator.store.sql import insert_ignore
from orchestrator.store.tables import ClaimRow

claims = ClaimRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Claim:
    name: str
    holder: str
    lease_owner: str
    claimed_at: datetime
    lease_until: datetime


def take(
    conn: sa.Connection,
    name: str,
    *,
    holder: str,
    owner: str,
    now: datetime,
    lease: timedelta,
    successor: bool = False,
) -> Claim | None:
    """Claim ``name`` for ``owner``: None when it is ``owner``'s now, else the live claim that
    stands in the way. Taken when nobody holds it, when its lease ran out, when ``owner`` holds
    it already (renewed), or with ``successor`` when its holder serves at ``holder`` too (the
    caller knows that holder is gone: it restarted in its place)."""
    conn.execute(
        insert_ignore(conn, claims, ["name"]).values(
            name=name, holder=holder, lease_owner=owner, claimed_at=now, lease_until=now + lease
        )
    )
    mine = claims.c.lease_owner == owner
    free = [mine, claims.c.lease_until < now]
    if successor:
        free.append(claims.c.holder == holder)
    taken = conn.execute(
        claims.update()
        .where(claims.c.name == name, sa.or_(*free))
        .values(
            holder=holder,
            lease_owner=owner,
            lease_until=now + lease,
            claimed_at=sa.case((mine, claims.c.claimed_at), else_=now),
        )
    )
    if taken.rowcount:
        return None
    return current(conn, name)


def current(conn: sa.Connection, name: str) -> Claim | None:
    row = conn.execute(sa.select(claims).where(claims.c.name == name)).mappings().first()
    return None if row is None else Claim(**dict(row))


def renew(conn: sa.Connection, name: str, owner: str, now: datetime, lease: timedelta) -> bool:
    """Extend ``owner``'s claim to ``now + lease``; False when it is not ``owner``'s any more."""
    result = conn.execute(
        claims.update()
        .where(claims.c.name == name, claims.c.lease_owner == owner)
        .values(lease_until=now + lease)
    )
    return bool(result.rowcount)


def release(conn: sa.Connection, name: str, owner: str) -> bool:
    """Give the claim up (a clean stop): the next process takes it at once."""
    result = conn.execute(
        claims.delete().where(claims.c.name == name, claims.c.lease_owner == owner)
    )
    return bool(result.rowcount)
