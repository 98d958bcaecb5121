"""stream.lag: the flush's first stage (InOrder) runs in order without holding the agent up,
within its event limit; its second half (OneBehind) runs in order, at most one behind."""

from __future__ import annotations

import asyncio

import pytest

from stream.lag import InOrder, OneBehind


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


def test_in_order_work_runs_in_submission_order_and_the_submitter_goes_on_within_the_limit():
    async def main():
        stage, log, gates = InOrder(limit=10), [], [asyncio.Event() for _ in range(3)]

        async def work(n: int) -> None:
            log.append(f"start {n}")
            await gates[n].wait()
            log.append(f"end {n}")

        await stage.submit(6, work, 0)
        await stage.submit(4, work, 1)  # 10 in flight: still within the limit, no wait
        third = asyncio.ensure_future(stage.submit(1, work, 2))
        await asyncio.sleep(0.01)
        assert log == ["start 0"] and not third.done()  # 11 > 10: the submitter waits
        gates[1].set()  # work 1 may not finish before work 0: order holds
        await asyncio.sleep(0.01)
        assert log == ["start 0"] and not third.done()
        gates[0].set()
        await third
        gates[2].set()
        await stage.drain()
        assert log == ["start 0", "end 0", "start 1", "end 1", "start 2", "end 2"]
        big = InOrder(limit=1)
        await big.submit(5, work, 2)  # larger than the limit but alone: admitted
        await big.drain()

    asyncio.run(main())


def test_an_in_order_failure_stops_the_later_work_and_is_raised_by_drain():
    async def main():
        stage, ran = InOrder(limit=100), []

        async def fail() -> None:
            raise RuntimeError("the store owner died")

        async def later() -> None:
            ran.append("later")

        await stage.submit(1, fail)
        await stage.submit(1, later)
        with pytest.raises(RuntimeError, match="owner died"):
            await stage.drain()
        assert ran == []

    asyncio.run(main())
