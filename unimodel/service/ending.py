"""Run a coroutine to its end whatever happens meanwhile to the task that awaits it: the end of a request.

``await run_to_end(coro)`` is ``await coro``, except that a cancellation of the awaiting task while ``coro``
runs does not reach ``coro``: it is held, and raised once ``coro`` is done (cancelled twice, it is raised
once). The chat service runs the end of every request through it (close the engine stream, every stage's
``exit``, the observers), which must run exactly once and completely even when the client leaves and then the
server shuts down; so no stage has to shield its own ``exit``.

``coro`` runs as a task of its own, awaited through :func:`asyncio.shield` until it is done. On Python 3.12
and later the task starts eagerly (``eager_start``): an end that never waits, the common case with in-memory
stages, is over before the first turn of the event loop. Written by hand because ``asyncio.shield`` alone
holds one cancellation, not a second one that arrives while the first is being waited out.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, Optional, TypeVar

T = TypeVar("T")

_EAGER = sys.version_info >= (3, 12)


def _start(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> "asyncio.Task[T]":
    if _EAGER:
        return asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg]
    return loop.create_task(coro)


async def run_to_end(coro: Coroutine[Any, Any, T]) -> T:
    """``await coro``, shielded from the caller's cancellation, which is raised after ``coro`` is done."""
    task = _start(asyncio.get_running_loop(), coro)
    held: Optional[asyncio.CancelledError] = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            if not task.done():  # ours, not the end's own: hold it and wait on
                held = exc
    if held is not None:
        if not task.cancelled():
            task.exception()  # retrieved, so it is never reported as "never retrieved"
        raise held
    return task.result()
