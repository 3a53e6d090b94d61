"""The in-process limit store (the default): the buckets of ``store.py`` in a dict, for one replica.

Atomic without a lock: ``acquire`` and ``release`` never await, so on the event loop nothing runs between a
check and its write. Buckets that have refilled to full say nothing a missing bucket would not, so they are
swept out now and then; memory stays proportional to the keys and users seen within one window.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Optional

from unimodel.gateway.limits.policy import Plan
from unimodel.gateway.limits.store import Decision, refill

_SWEEP_EVERY = 4096  # admissions between sweeps of full buckets


class MemoryStore:
    remote = False

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: dict[str, tuple[float, float, int, float]] = {}  # id → (level, at, limit, window_s)
        self._in_flight: dict[str, int] = {}
        self._until_sweep = _SWEEP_EVERY

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def check(self) -> bool:
        return True  # this process's memory

    def status(self) -> dict[str, Any]:
        return {"store": "memory", "buckets": len(self._buckets), "in_flight": sum(self._in_flight.values())}

    def _level(self, bucket_id: str, limit: int, now: float, window_s: float) -> float:
        state = self._buckets.get(bucket_id)
        if state is None:
            return float(limit)
        return refill(state[0], now - state[1], limit, window_s)

    async def acquire(self, plan: Plan, lease: str) -> Decision:
        now, window = self.clock(), plan.window_s
        levels = [self._level(b.id, b.limit, now, window) for b in plan.buckets]
        if any(level < b.cost for level, b in zip(levels, plan.buckets)):
            return Decision(False, tuple(levels))
        if plan.concurrency_id is not None and self._in_flight.get(plan.concurrency_id, 0) >= plan.max_concurrent:
            return Decision(False, tuple(levels), concurrency_full=True)
        for i, b in enumerate(plan.buckets):
            levels[i] -= b.cost
            self._buckets[b.id] = (levels[i], now, b.limit, window)
        if plan.concurrency_id is not None:
            self._in_flight[plan.concurrency_id] = self._in_flight.get(plan.concurrency_id, 0) + 1
        self._until_sweep -= 1
        if self._until_sweep <= 0:
            self._sweep(now)
        return Decision(True, tuple(levels))

    async def release(self, plan: Plan, returns: Sequence[float], lease: Optional[str]) -> None:
        now, window = self.clock(), plan.window_s
        for b, back in zip(plan.buckets, returns):
            if back == 0:
                continue
            level = min(float(b.limit), self._level(b.id, b.limit, now, window) + back)
            if level >= b.limit:
                self._buckets.pop(b.id, None)
            else:
                self._buckets[b.id] = (level, now, b.limit, window)
        if lease is not None and plan.concurrency_id is not None:
            left = self._in_flight.get(plan.concurrency_id, 0) - 1
            if left > 0:
                self._in_flight[plan.concurrency_id] = left
            else:
                self._in_flight.pop(plan.concurrency_id, None)

    def _sweep(self, now: float) -> None:
        self._until_sweep = _SWEEP_EVERY
        full = [k for k, (level, at, limit, window) in self._buckets.items()
                if refill(level, now - at, limit, window) >= limit]
        for k in full:
            del self._buckets[k]
