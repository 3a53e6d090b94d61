"""The gateway's queue in front of a saturated pool: priority classes first, then fair between tenants.

When every replica is saturated (its queue at the pool's bound, its KV cache full, its metrics stale), a new
request waits here instead of joining some replica's own queue, so the gateway still decides the order in which
requests reach the engines. The order is start-time fair queuing (Goyal et al., 1996) within each priority
rank: a request's tag is one more than the larger of the queue's virtual time and its tenant's last tag, and
the waiter with the lowest (rank, tag) goes first; the virtual time is the tag of the last request admitted.
So a tenant with a hundred requests queued gets tags 1 … 100 while one with a single request gets the next
tag after the current virtual time: it goes next, not after the hundred. A request with a lower rank (an
interactive one) always goes before any of a higher rank (a batch job's) that waits, however long that one has
waited; nothing already admitted is ever taken back (the queue is only in front of the first byte).

Bounded: at most ``max_waiting`` waiters (beyond: 503 ``queue_full`` at once), each for at most ``timeout_s``
(then 503 ``pool_saturated``). Tenants' last tags are kept only while they are ahead of the virtual time, so
the table never outgrows the tenants that have requests waiting. Written by hand: a heap and a dict, on the
event loop only; asyncio's ``PriorityQueue`` has no cancellation of one waiter and no fair tags.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Optional

from unimodel.errors import OverloadedError, PoolSaturatedError


class _Waiter:
    __slots__ = ("rank", "tag", "seq", "future")

    def __init__(self, rank: int, tag: float, seq: int, future: asyncio.Future[None]) -> None:
        self.rank, self.tag, self.seq, self.future = rank, tag, seq, future

    def __lt__(self, other: _Waiter) -> bool:
        return (self.rank, self.tag, self.seq) < (other.rank, other.tag, other.seq)


class AdmissionQueue:
    """Requests waiting for a replica with room, admitted by :meth:`admit_next`."""

    def __init__(self, max_waiting: int, timeout_s: float) -> None:
        self.max_waiting = max_waiting
        self.timeout_s = timeout_s
        self._heap: list[_Waiter] = []
        self._waiting = 0  # live waiters (the heap may still hold ones that left)
        self._vtime = 0.0
        self._last_tag: dict[str, float] = {}
        self._seq = itertools.count()
        self.admitted = 0
        self.timed_out = 0
        self.refused = 0

    def __len__(self) -> int:
        return self._waiting

    async def wait(self, rank: int, tenant: Optional[str]) -> None:
        """Wait until admitted; :class:`OverloadedError` when the queue is full, :class:`PoolSaturatedError`
        when the wait runs out. A waiter that is cancelled leaves the queue."""
        if self._waiting >= self.max_waiting:
            self.refused += 1
            raise OverloadedError(f"the upstream pool is saturated and {self.max_waiting} requests already wait "
                                  "for it; retry later", retry_after=max(1, round(self.timeout_s)))
        key = tenant or ""
        tag = max(self._vtime, self._last_tag.get(key, 0.0)) + 1.0
        self._last_tag[key] = tag
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(rank, tag, next(self._seq), future)
        heapq.heappush(self._heap, waiter)
        self._waiting += 1
        try:
            await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except asyncio.TimeoutError:
            self.timed_out += 1
            raise PoolSaturatedError(f"every replica of the upstream pool stayed saturated for "
                                     f"{self.timeout_s:g} s; retry later",
                                     retry_after=max(1, round(self.timeout_s))) from None
        finally:
            if not future.done():  # timed out or cancelled: leave the queue (the heap drops it lazily)
                future.cancel()
                self._waiting -= 1

    def admit_next(self) -> bool:
        """Admit the first waiter in order; ``False`` when none waits."""
        heap = self._heap
        while heap:
            waiter = heapq.heappop(heap)
            if waiter.future.done():  # it left
                continue
            waiter.future.set_result(None)
            self._waiting -= 1
            self.admitted += 1
            self._vtime = max(self._vtime, waiter.tag)
            self._forget_behind()
            return True
        return False

    def _forget_behind(self) -> None:
        """Drop tenants whose last tag the virtual time has passed: a new request of theirs starts from it."""
        if len(self._last_tag) > 2 * self._waiting + 16:
            vtime = self._vtime
            for key in [k for k, tag in self._last_tag.items() if tag <= vtime]:
                del self._last_tag[key]
