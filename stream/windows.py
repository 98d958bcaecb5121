"""Per-user tumbling windows in event time, with a watermark and count/idle triggers.

Why a user's *whole* pending buffer flushes when any of its windows closes: the store keeps,
per user and input partition, the highest offset applied. Flushing all of a user's pending
events at once keeps what was applied a prefix (in offset order) of that user's events, so a
redelivered record is recognised exactly by ``offset <= applied``. Windows still decide
*when* a user flushes; the profile maths is exact whatever the grouping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from stream.events import Event

__all__ = ["UserWindow", "WindowBuffer"]

H = TypeVar("H")  # the handle the caller acks once the window is applied (a Faust event)


@dataclass(slots=True)
class UserWindow(Generic[H]):
    """A user's pending events (arrival order) and the handles to ack after applying them."""

    user_id: str
    events: list[Event] = field(default_factory=list)
    handles: list[H] = field(default_factory=list)
    first_window_end_ms: int = 0

    def __reduce__(self) -> tuple:
        return (UserWindow, (self.user_id, self.events, self.handles, self.first_window_end_ms))  # see Event.__reduce__


class WindowBuffer(Generic[H]):
    """Buffers events per user until their tumbling window closes.

    A user's oldest window ``[start, start + size)`` closes once the watermark (the newest
    event time seen by this buffer) reaches ``start + size``; a user also flushes at
    ``max_events`` pending events, and everything flushes at ``max_pending`` buffered
    events or on :meth:`drain` (idle timeout, shutdown). While the caller is catching up
    on a backlog, windows stay open up to ``catchup_pending`` buffered events instead
    (:meth:`pop_ready`). Not thread-safe: one event loop.
    """

    def __init__(self, size_ms: int, max_events: int, max_pending: int, catchup_pending: int = 0) -> None:
        if size_ms <= 0 or max_events <= 0 or max_pending <= 0:
            raise ValueError("window size, max_events and max_pending must be positive")
        if catchup_pending < 0:
            raise ValueError("catchup_pending must be >= 0 (0: off)")
        self.size_ms = size_ms
        self.max_events = max_events
        self.max_pending = max_pending
        self.catchup_pending = catchup_pending
        #: catch-up slices hold more than a normal flush would (else they are off)
        self.catches_up = catchup_pending > max_pending
        self.watermark_ms = 0
        self._users: dict[str, UserWindow[H]] = {}
        self._full: set[str] = set()
        self._pending = 0

    @property
    def pending(self) -> int:
        """Number of buffered events."""
        return self._pending

    def window_end(self, ts_ms: int) -> int:
        return (ts_ms // self.size_ms + 1) * self.size_ms

    def add(self, event: Event, handle: H) -> None:
        window = self._users.get(event.user_id)
        end = self.window_end(event.ts_ms)
        if window is None:
            window = self._users[event.user_id] = UserWindow(event.user_id, first_window_end_ms=end)
        elif end < window.first_window_end_ms:
            window.first_window_end_ms = end
        window.events.append(event)
        window.handles.append(handle)
        self._pending += 1
        if len(window.events) >= self.max_events:
            self._full.add(event.user_id)
        if event.ts_ms > self.watermark_ms:
            self.watermark_ms = event.ts_ms

    def pop_ready(self, catching_up: bool = False) -> list[UserWindow[H]]:
        """Remove and return the users whose window closed or who hit a count limit.

        ``catching_up`` (the input holds a backlog): closed windows stay open and only users
        at ``max_events`` flush, until ``catchup_pending`` events are buffered; then all
        flush. A user with several events in that slice of the backlog then costs one
        update and one recommendation, not one per window, and the one it gets is as fresh.
        """
        catchup = catching_up and self.catches_up
        if self._pending >= (self.catchup_pending if catchup else self.max_pending):
            return self.drain()
        if catchup:
            return [self._pop(user) for user in list(self._full)]
        ready = [
            user
            for user, window in self._users.items()
            if window.first_window_end_ms <= self.watermark_ms or user in self._full
        ]
        return [self._pop(user) for user in ready]

    def drain(self) -> list[UserWindow[H]]:
        """Remove and return every pending user window."""
        return [self._pop(user) for user in list(self._users)]

    def _pop(self, user: str) -> UserWindow[H]:
        window = self._users.pop(user)
        self._full.discard(user)
        self._pending -= len(window.events)
        return window
