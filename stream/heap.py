"""Garbage collection around catch-up slices.

A catch-up slice (``windows.catchup_pending``) keeps up to 100,000 events buffered, each with
its Faust event and message: about a million live objects that every full collection scans.
Behind a 200,000-event backlog Python ran 25 full collections of about 200 ms each, 12-15% of
the worker's CPU (BENCHMARKS.md), and they found almost nothing: the buffer frees its events
by reference count when the slice is flushed. So while a slice fills, automatic collections
wait, and one full collection runs once the slice is flushed, with the buffer empty.
"""

from __future__ import annotations

import gc
import time

__all__ = ["SliceCollector"]


class SliceCollector:
    """Holds automatic garbage collection back between :meth:`hold` and :meth:`release`;
    :meth:`collect` runs a full collection meanwhile (at the end of each slice).

    Process-wide, like ``gc`` itself; for the event loop's thread. The cyclic garbage made
    while held waits for the next :meth:`collect`: bounded by one slice, and small (about
    3,000 objects in a 200,000-event run, against 1.2 million objects scanned per full
    collection).
    """

    def __init__(self) -> None:
        self._was_enabled: bool | None = None  # None: not holding

    @property
    def held(self) -> bool:
        return self._was_enabled is not None

    def hold(self) -> None:
        if self._was_enabled is None:
            self._was_enabled = gc.isenabled()
            gc.disable()

    def release(self) -> None:
        """Automatic collection as it was before :meth:`hold`."""
        if self._was_enabled is not None:
            if self._was_enabled:
                gc.enable()
            self._was_enabled = None

    def collect(self) -> float:
        """One full collection now; returns its seconds."""
        started = time.perf_counter()
        gc.collect()
        return time.perf_counter() - started
