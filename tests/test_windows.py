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


def test_catching_up_keeps_closed_windows_open_until_catchup_pending():
    buf = WindowBuffer(size_ms=1000, max_events=3, max_pending=4, catchup_pending=8)
    for i, user in enumerate(["a", "b", "a", "c"]):
        buf.add(ev(user, 1000 * i), i)  # each event closes the window before it
    assert buf.pop_ready(catching_up=True) == []  # 4 pending: past max_pending, not catchup_pending
    buf.add(ev("a", 5000), 4)  # a's third event: max_events still flushes that one user
    assert [(w.user_id, len(w.events)) for w in buf.pop_ready(catching_up=True)] == [("a", 3)]
    for i in range(6):
        buf.add(ev("b", 6000 + 1000 * i), 10 + i)
    assert buf.pending == 8
    ready = buf.pop_ready(catching_up=True)  # catchup_pending reached: everything flushes
    assert sorted((w.user_id, len(w.events)) for w in ready) == [("b", 7), ("c", 1)]
    assert buf.pending == 0


def test_caught_up_windows_close_on_time_again_and_catchup_can_be_off():
    buf = WindowBuffer(size_ms=1000, max_events=100, max_pending=100, catchup_pending=1000)
    buf.add(ev("a", 100), 1)
    buf.add(ev("b", 1500), 2)
    assert buf.pop_ready(catching_up=True) == []
    assert [w.user_id for w in buf.pop_ready()] == ["a"]  # not behind any more: a's window closed at 1000
    off = WindowBuffer(size_ms=1000, max_events=100, max_pending=100, catchup_pending=0)
    off.add(ev("a", 100), 1)
    off.add(ev("b", 1500), 2)
    assert [w.user_id for w in off.pop_ready(catching_up=True)] == ["a"]


def test_unread_counts_every_partition_taken_from_not_only_the_current_batch():
    from stream.app import _unread

    class Consumer:
        marks = {("views", 0): 5_000, ("views", 1): 4_000, ("purchases", 0): 100}

        def highwater(self, tp):
            if tp == ("gone", 0):
                raise KeyError(tp)  # revoked meanwhile
            return self.marks.get(tp)

    # the latest batch came from purchases:0 alone, nearly read; views still hold most of it
    read_to = {("views", 0): 999, ("views", 1): 1_999, ("purchases", 0): 98, ("gone", 0): 5, ("unfetched", 0): 3}
    assert _unread(Consumer(), read_to) == 4_000 + 2_000 + 1
