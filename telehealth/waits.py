"""Waiting on an event for at most a while, in a task that may be cancelled meanwhile."""

from __future__ import annotations

import asyncio


async def wait_at_most(event: asyncio.Event, seconds: float) -> None:
    """Return once ``event`` is set or ``seconds`` have passed, whichever comes first.

    Not ``asyncio.wait_for``: on Python 3.11, a cancel that lands as its timeout fires comes
    out as TimeoutError, so a loop that shrugs off timeouts ran on and the shutdown that
    cancelled it waited for ever. ``asyncio.timeout`` lets the cancel through.
    """
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        pass
