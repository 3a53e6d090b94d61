"""Deadlines on an event stream: the next event, or :class:`DeadlinePassed` when the deadline passes first.

``next_before`` (for a first event: once per try) uses ``asyncio.timeout_at``. For the rest of a stream,
:class:`StreamDeadline` sets one timer per request instead of one per event (``asyncio.timeout`` costs a few
microseconds an event, which adds up over a long answer): when it fires while the stream is waiting for its
next event, it cancels that wait; when it fires in between, the next wait fails at once. Written by hand
because no library bounds an async iterator without a timer per step.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

from unimodel.errors import UnimodelError
from unimodel.service.pipeline import StageState

T = TypeVar("T")

PRECISE_DEADLINES = sys.version_info >= (3, 11)  # StreamDeadline needs Task.uncancel


@dataclass(frozen=True, slots=True)
class RequestDeadline:
    """A request's total deadline (event-loop time), for what waits outside the event stream on its behalf: the
    server's writes to a client that stopped reading (``server/routes/chat.py``). ``error()``: what passing it
    is (the same 504 as when it passes while the stream waits for an event)."""

    at: float
    error: Callable[[], UnimodelError]


#: set by the resilience stage on a request with a total timeout
REQUEST_DEADLINE: StageState[RequestDeadline] = StageState("resilience.deadline")


class DeadlinePassed(Exception):
    """Our deadline passed (told apart from a ``TimeoutError`` an engine raised itself)."""


if sys.version_info >= (3, 11):
    async def next_before(items: AsyncIterator[T], deadline: float) -> T:
        """The next item, or :class:`DeadlinePassed` at ``deadline`` (event-loop time), in the caller's task."""
        timeout = asyncio.timeout_at(deadline)
        try:
            async with timeout:
                return await anext(items)
        except TimeoutError:
            if timeout.expired():
                raise DeadlinePassed() from None
            raise
else:  # pragma: no cover - Python 3.10
    async def next_before(items: AsyncIterator[T], deadline: float) -> T:
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(anext(items), max(0.0, remaining))
        except asyncio.TimeoutError:
            raise DeadlinePassed() from None


class StreamDeadline:
    """One deadline over the rest of a stream. Per event, the caller does::

        deadline.check()                      # DeadlinePassed once it has passed
        deadline.waiting = asyncio.current_task(loop)
        try:
            item = await items.__anext__()
        except asyncio.CancelledError:
            if deadline.cancelled_us(): raise DeadlinePassed
            raise
        finally:
            deadline.waiting = None

    (inline, not a helper coroutine: a coroutine per event costs more than all the rest). ``close()`` cancels
    the timer. Needs ``Task.uncancel`` (Python 3.11); on 3.10 :func:`next_before` serves instead.
    """

    __slots__ = ("deadline", "expired", "waiting", "_loop", "_handle")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False
        self.waiting: Optional[asyncio.Task[Any]] = None
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_at(deadline, self._fire)

    def _fire(self) -> None:
        self.expired = True
        if self.waiting is not None:
            self.waiting.cancel()

    def check(self) -> None:
        if self.expired:
            raise DeadlinePassed()

    def cancelled_us(self) -> bool:
        """After a ``CancelledError`` in the wait: was it the deadline's alone (then the task is uncancelled)?"""
        task = self.waiting
        return self.expired and task is not None and task.uncancel() == 0

    def close(self) -> None:
        self._handle.cancel()
