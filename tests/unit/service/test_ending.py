"""``run_to_end``: the coroutine runs as a task of its own; the caller's cancellations, one or several, wait
for it and are raised once it is done; what it raises is raised to the caller."""

from __future__ import annotations

import asyncio
import contextvars
import sys

import pytest

from unimodel.service.ending import run_to_end

VAR: contextvars.ContextVar[str] = contextvars.ContextVar("VAR", default="unset")


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks")
async def test_an_end_that_never_waits_is_done_before_the_loop_turns() -> None:
    order: list[str] = []

    async def quick() -> int:
        order.append("end")
        return 7

    asyncio.get_running_loop().call_soon(order.append, "loop turned")
    assert await run_to_end(quick()) == 7
    assert order[0] == "end"


async def test_cancellations_while_it_waits_are_held_until_it_is_done() -> None:
    release, log = asyncio.Event(), list[object]()

    async def end() -> str:
        task = asyncio.current_task()
        log.append(VAR.get())
        await release.wait()
        log.append((asyncio.current_task() is task, VAR.get()))
        return "done"

    async def request() -> str:
        VAR.set("request's")
        return await run_to_end(end())

    task = asyncio.ensure_future(request())
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.sleep(0.01)
    assert not task.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["request's", (True, "request's")]  # one task from its start; the context carried over


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout")
async def test_a_timeout_inside_the_end_fires() -> None:
    async def end() -> str:
        try:
            async with asyncio.timeout(0.05):  # bound to the end's own task, not the caller's
                await asyncio.sleep(10)
        except TimeoutError:
            return "timed out"
        return "slept"

    assert await asyncio.wait_for(run_to_end(end()), 5) == "timed out"


async def test_what_it_raises_is_raised_inline_or_after_the_hand_off() -> None:
    async def at_once() -> None:
        raise ValueError("inline")

    async def later() -> None:
        await asyncio.sleep(0)
        raise ValueError("handed off")

    with pytest.raises(ValueError, match="inline"):
        await run_to_end(at_once())
    with pytest.raises(ValueError, match="handed off"):
        await run_to_end(later())


async def test_nested_runs_and_many_at_once() -> None:
    async def inner(i: int) -> int:
        await asyncio.sleep(0)
        return i

    async def outer(i: int) -> int:
        value = await run_to_end(inner(i))
        await asyncio.sleep(0)
        return value + 1

    assert await asyncio.gather(*(run_to_end(outer(i)) for i in range(20))) == [i + 1 for i in range(20)]
