"""Scheduler results handed to one event loop with one wake-up per decode step, not one per sequence."""

from __future__ import annotations

import asyncio
import threading
from typing import Optional

from unimodel.engines.local.sequence import StopReason

#: what the scheduler thread posts for a sequence: (new tokens, finish reason or None, error or None)
Item = tuple[list[int], Optional[StopReason], Optional[BaseException]]


class Mailbox:
    """Hands scheduler results to one event loop with one wake-up per decode step, not one per sequence.

    Every ``call_soon_threadsafe`` writes to the loop's self-pipe and takes the GIL from the decode thread;
    with 16 streams that was 16 wake-ups per step. ``post`` only queues (from the scheduler thread);
    ``wake`` (the sequences' ``flush``, called once at the end of a step) schedules one drain.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Queue[Item], Item]] = []
        self._scheduled = False

    def post(self, inbox: asyncio.Queue[Item], item: Item) -> None:
        if self._loop.is_closed():  # the scheduler then treats the sequence as cancelled
            raise RuntimeError("the event loop of this request is closed")
        with self._lock:
            self._items.append((inbox, item))

    def wake(self) -> None:
        with self._lock:
            if self._scheduled or not self._items:
                return
            self._scheduled = True
        self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            items, self._items, self._scheduled = self._items, [], False
        for inbox, item in items:
            inbox.put_nowait(item)
