"""Event-time tumbling windows: watermark closing, count limits, drains."""

from stream.events import Event
from stream.windows import WindowBuffer


def ev(user, ts, offset=0):
    return Event(user_id=user, item_id="i", ts_ms=ts, kind=0, source="t:0", offset=offset)


def test_window_closes_when_the_watermark_passes_its_end():
    buf = WindowBuffer(size_ms=1000, max_events=100, max_pending=1000)
    buf.add(ev("a", 100), "h1")
    buf.add(ev("a", 900), "h2")
    assert buf.pop_ready() == []  # watermark 900 < window end 1000
    buf.add(ev("b", 1000), "h3")  # watermark reaches 1000: a's window [0, 1000) closes
    ready = buf.pop_ready()
    assert [w.user_id for w in ready] == ["a"]
    assert ready[0].handles == ["h1", "h2"] and buf.pending == 1


def test_a_flush_takes_all_of_a_users_windows():
    buf = WindowBuffer(size_ms=1000, max_events=100, max_pending=1000)
    buf.add(ev("a", 5000), 1)
    buf.add(ev("a", 100), 2)  # out of order: an older window for the same user
    ready = buf.pop_ready()  # watermark 5000 closes [0, 1000) → the whole user flushes
    assert len(ready) == 1 and [e.ts_ms for e in ready[0].events] == [5000, 100]
    assert buf.pending == 0


def test_max_events_flushes_one_user_and_max_pending_flushes_all():
    buf = WindowBuffer(size_ms=10**9, max_events=3, max_pending=5)
    for i in range(3):
        buf.add(ev("a", 1), i)
    buf.add(ev("b", 1), 9)
    assert [w.user_id for w in buf.pop_ready()] == ["a"]
    for i in range(4):
        buf.add(ev(f"u{i}", 1), i)
    assert buf.pending == 5
    assert len(buf.pop_ready()) == 5 and buf.pending == 0


def test_drain_returns_everything():
    buf = WindowBuffer(size_ms=1000, max_events=10, max_pending=100)
    buf.add(ev("a", 1), 1)
    buf.add(ev("b", 2), 2)
    assert sorted(w.user_id for w in buf.drain()) == ["a", "b"] and buf.pending == 0
