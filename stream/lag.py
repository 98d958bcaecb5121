"""The second half of a flush, one flush behind: the next one is applied meanwhile.

A flush is LMDB commit → recommendations sent → changelog delivered → input acked. The
changelog delivery is a broker round trip during which the worker has nothing to do; under
load it is a third of a small flush's wall time (BENCHMARKS.md, 2026-12-02). :class:`OneBehind`
lets flush N+1 be applied and its recommendations sent while flush N's changelog is in
flight, and no further: flush N+1's second half starts only after flush N's is done, so the
changelog and the acks keep the flushes' order and at most one flush is unacknowledged
beyond the one being applied.

Nothing about exactly-once changes: records are acked only after their flush's changelog
was delivered, as before; a crash in between leaves them un-acked, and the profiles carry
their applied offsets, so the redelivery is recognised (stream.processor).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

__all__ = ["InOrder", "OneBehind"]


class OneBehind:
    """Runs submitted coroutines one at a time, in order, at most one in flight."""

    def __init__(self) -> None:
        self._running: asyncio.Task | None = None

    async def submit(self, work: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        """Wait for the previous work (re-raising its error), then start ``work(*args)`` and
        return without waiting for it."""
        await self.drain()
        self._running = asyncio.ensure_future(work(*args))

    async def drain(self) -> None:
        """Wait until the submitted work is done; re-raise its exception if it failed."""
        running, self._running = self._running, None
        if running is not None:
            await running

    @property
    def busy(self) -> bool:
        return self._running is not None and not self._running.done()


class InOrder:
    """Runs submitted coroutines one after another, in submission order, without making the
    submitter wait, while their total ``size`` stays within ``limit``.

    The flush's first stage: the agent submits a flush's windows to the store's owner and
    goes on consuming (the next catch-up slice) while the owner applies them, so the two
    processes work side by side. ``limit`` (events) bounds what is applied but not yet
    settled; a submit beyond it waits.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._last: asyncio.Task | None = None
        self._size = 0
        self._room = asyncio.Condition()

    async def submit(self, size: int, work: Callable[..., Coroutine[Any, Any, None]], *args: Any) -> None:
        """Start ``work(*args)`` once the earlier ones are done; return as soon as ``size``
        fits in the limit (at once when nothing is in flight)."""
        async with self._room:
            await self._room.wait_for(lambda: self._size == 0 or self._size + size <= self.limit)
            self._size += size
        previous = self._last

        async def run() -> None:
            try:
                if previous is not None:
                    await previous  # raises what it raised: the stage stops there
                await work(*args)
            finally:
                async with self._room:
                    self._size -= size
                    self._room.notify_all()

        self._last = asyncio.ensure_future(run())

    async def drain(self) -> None:
        """Wait until everything submitted is done; re-raise the first failure."""
        last = self._last
        if last is not None:
            await last
            if self._last is last:
                self._last = None
