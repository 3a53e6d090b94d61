"""Deadlines on a stream: one timer per stream, our cancellation told apart from a client's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from unimodel.gateway.resilience.deadline import PRECISE_DEADLINES, DeadlinePassed, StreamDeadline, next_before

pytestmark = pytest.mark.skipif(not PRECISE_DEADLINES, reason="StreamDeadline needs Python 3.11")


async def ticks(delay_s: float, n: int = 1000) -> AsyncIterator[int]:
    for i in range(n):
        await asyncio.sleep(delay_s)
        yield i


async def pull(deadline: StreamDeadline, items: AsyncIterator[int]) -> int:
    """The stage's inline pattern, as a helper for the test."""
    loop = asyncio.get_running_loop()
    deadline.check()
    deadline.waiting = asyncio.current_task(loop)
    try:
        return await items.__anext__()
    except asyncio.CancelledError:
        if deadline.cancelled_us():
            raise DeadlinePassed() from None
        raise
    finally:
        deadline.waiting = None


async def test_the_deadline_cancels_a_wait_in_progress() -> None:
    loop = asyncio.get_running_loop()
    bound = StreamDeadline(loop.time() + 0.05)
    items = ticks(3600)
    with pytest.raises(DeadlinePassed):
        await asyncio.wait_for(pull(bound, items), 5)
    assert bound.expired
    await asyncio.sleep(0)  # the task is usable again: its cancellation was taken back
    bound.close()


async def test_a_deadline_passing_between_events_fails_the_next_wait_at_once() -> None:
    loop = asyncio.get_running_loop()
    bound = StreamDeadline(loop.time() + 0.02)
    items = ticks(0)
    assert await pull(bound, items) == 0
    await asyncio.sleep(0.05)
    with pytest.raises(DeadlinePassed):
        await pull(bound, items)
    bound.close()


async def test_a_client_cancelling_is_still_a_cancellation_even_when_the_deadline_fires_too() -> None:
    loop = asyncio.get_running_loop()
    bound = StreamDeadline(loop.time() + 0.05)
    task = asyncio.create_task(pull(bound, ticks(3600)))
    await asyncio.sleep(0.01)
    task.cancel()
    bound._fire()  # both at once
    with pytest.raises(asyncio.CancelledError):
        await task
    bound.close()


async def test_a_closed_deadline_never_fires() -> None:
    loop = asyncio.get_running_loop()
    bound = StreamDeadline(loop.time() + 0.01)
    bound.close()
    await asyncio.sleep(0.03)
    assert not bound.expired


async def test_next_before() -> None:
    loop = asyncio.get_running_loop()
    assert await next_before(ticks(0), loop.time() + 5) == 0
    with pytest.raises(DeadlinePassed):
        await next_before(ticks(3600), loop.time() + 0.02)
