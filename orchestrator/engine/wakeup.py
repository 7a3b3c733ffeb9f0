"""A wake-up call between the engine's loops in one process (new tasks, new events).

Only a shortcut: every loop also looks at the database on a short period, because another
process on the same database never rings this one.
"""

from __future__ import annotations

import asyncio
import contextlib


class Wakeup:
    """``ring()`` wakes every ``wait()`` on a ticket taken before it. Take the ticket before
    looking for work, so a ring between the look and the wait is not missed."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def ring(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def ticket(self) -> asyncio.Event:
        return self._event

    async def wait(self, seconds: float, ticket: asyncio.Event | None = None) -> bool:
        """True when rung (since ``ticket`` was taken), False when ``seconds`` passed first."""
        event = ticket or self._event
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await event.wait()
                return True
        return False
