"""stream.lag.OneBehind: the flush's second half runs in order, at most one behind."""

from __future__ import annotations

import asyncio

import pytest

from stream.lag import OneBehind


def test_work_runs_in_order_with_at_most_one_in_flight():
    async def main():
        behind, log, gates = OneBehind(), [], [asyncio.Event() for _ in range(3)]

        async def work(n: int) -> None:
            log.append(f"start {n}")
            await gates[n].wait()
            log.append(f"end {n}")

        await behind.submit(work, 0)  # returns at once: work 0 runs behind the caller
        await asyncio.sleep(0)
        assert behind.busy and log == ["start 0"]
        second = asyncio.ensure_future(behind.submit(work, 1))
        await asyncio.sleep(0.01)
        assert not second.done()  # work 1 waits for work 0
        gates[0].set()
        await second
        await asyncio.sleep(0)
        assert log == ["start 0", "end 0", "start 1"]
        gates[1].set()
        await behind.drain()
        assert not behind.busy and log[-1] == "end 1"
        await behind.drain()  # nothing in flight: returns

    asyncio.run(main())


def test_a_failure_is_raised_by_the_next_submit_or_drain_once():
    async def main():
        behind = OneBehind()

        async def fail() -> None:
            raise RuntimeError("changelog delivery failed")

        await behind.submit(fail)
        with pytest.raises(RuntimeError, match="delivery failed"):
            await behind.drain()
        await behind.drain()  # reported once

        async def ok() -> None:
            pass

        await behind.submit(fail)
        with pytest.raises(RuntimeError):
            await behind.submit(ok)  # the new work is not started after a failure
        assert not behind.busy

    asyncio.run(main())
