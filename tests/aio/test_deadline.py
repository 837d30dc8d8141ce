"""deadline(): asyncio.timeout()'s behaviour for the per-tunnel steps. Time up:
TimeoutError and the block's work cancelled. Done in time: nothing, and no timer left
behind. Cancelled from elsewhere: a CancelledError, also when the time is up at once.
Nested: the inner one expiring is the inner one's TimeoutError only."""
import asyncio

import pytest

from meshcore.aio.deadline import deadline


def test_time_up_is_a_timeout_error_and_cancels_the_work(run):
    async def scenario():
        cancelled = []

        async def work():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise
        limit = deadline(0.05)
        with pytest.raises(TimeoutError):
            async with limit:
                await work()
        assert cancelled == [True] and limit.expired()
        assert asyncio.current_task().cancelling() == 0
        await asyncio.sleep(0.01)                 # the task carries on normally
    run(scenario())


def test_done_in_time_raises_nothing_and_leaves_no_timer(run):
    async def scenario():
        limit = deadline(0.2)
        async with limit:
            await asyncio.sleep(0.01)
        assert not limit.expired() and limit._handle is None
        await asyncio.sleep(0.3)                  # its timer never fires afterwards
        async with deadline(None):
            await asyncio.sleep(0.01)
    run(scenario())


def test_a_cancellation_from_elsewhere_stays_a_cancellation(run):
    async def scenario():
        started = asyncio.Event()

        async def body(delay):
            async with deadline(delay):
                started.set()
                await asyncio.sleep(10)
        for delay in (5.0, 0.0):
            started.clear()
            task = asyncio.get_running_loop().create_task(body(delay))
            if delay:
                await started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert task.cancelled()
    run(scenario())


def test_expired_together_with_an_outside_cancel_is_a_cancellation(run):
    async def scenario():
        async def body():
            async with deadline(0):
                # the deadline fires at the block's first step and the outside cancel in
                # the same loop turn, queued after it, before the task resumes: both want
                # out (call_soon keeps that order; two timers due together would not)
                asyncio.get_running_loop().call_soon(task.cancel)
                await asyncio.sleep(10)
        task = asyncio.get_running_loop().create_task(body())
        with pytest.raises(asyncio.CancelledError):
            await task
    run(scenario())


def test_nested_deadlines_each_raise_their_own(run):
    async def scenario():
        async with deadline(5.0) as outer:
            with pytest.raises(TimeoutError):
                async with deadline(0.02):
                    await asyncio.sleep(10)
            assert not outer.expired()
            await asyncio.sleep(0.01)
        with pytest.raises(TimeoutError):
            async with deadline(0.02):
                async with deadline(5.0):
                    await asyncio.sleep(10)
    run(scenario())
