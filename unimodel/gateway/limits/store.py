"""The limit store contract, and the one algorithm both stores implement.

**The algorithm: a token bucket per limit, refilled continuously** (the same arithmetic as GCRA, kept as a level
and a timestamp instead of one "theoretical arrival time"). A bucket holds ``limit`` units and refills at
``limit / window`` per second; a call is admitted when every bucket it draws from holds at least its cost, and
then takes the cost from each. Why this one:

* exact: the state is two numbers per bucket, read and written in one atomic step (one Lua script in Redis),
  so there is nothing to approximate across replicas (a fixed window lets through twice the limit around its
  edges; a sliding *counter* interpolates between two windows);
* O(1) per call whatever the limit (a sliding-window *log* keeps every request of the window, so a 100k-tpm
  bucket would hold a sorted set of every request and sum its weights on every call);
* it takes weights and refunds: tokens are reserved at admission and settled with the real usage later, by
  adding back (capped at the bucket's size) or taking more (the level may go below zero: a debt the next
  calls wait for). Reserving then refunding leaves exactly the state that charging the real usage at
  admission would have left;
* the headers OpenAI sends fall out of it: remaining = the level, reset = the time to refill to full,
  ``Retry-After`` = the time until the level covers the cost. A fresh key may use its whole window's
  worth at once (as OpenAI's limits do), then gets ``limit / window`` per second.

Concurrency is a counter per key (in Redis, a sorted set of leases, so a replica that dies frees its slots when
their leases run out).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Protocol

from unimodel.gateway.limits.policy import Plan


@dataclass(frozen=True, slots=True)
class Decision:
    """An admission: ``levels`` holds each bucket's level after it (taken when admitted, untouched when not);
    ``concurrency_full``: refused for the in-flight cap alone."""

    allowed: bool
    levels: tuple[float, ...]
    concurrency_full: bool = False


class StoreUnavailable(Exception):
    """The store could not answer (Redis down or slow); the stage applies ``--limits-on-redis-failure``."""


class LimitStore(Protocol):
    #: the store does I/O per call (admission may be interrupted half-way, so the stage shields it)
    remote: bool

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def status(self) -> dict[str, Any]: ...

    async def check(self) -> bool:
        """Whether the store's backend answers now (Redis: a cached PING under a short timeout); for
        ``/ready``, never per request."""

    async def acquire(self, plan: Plan, lease: str) -> Decision:
        """Check every bucket and the concurrency cap of ``plan``; take them all, or nothing."""

    async def release(self, plan: Plan, returns: Sequence[float], lease: Optional[str]) -> None:
        """Give back ``returns[i]`` units to ``plan.buckets[i]`` (negative: take more), capped at the bucket's
        size; free the concurrency slot ``lease`` when given."""


def refill(level: float, elapsed_s: float, limit: int, window_s: float) -> float:
    """A bucket's level ``elapsed_s`` after it was ``level``."""
    if elapsed_s <= 0:
        return level
    return min(float(limit), level + elapsed_s * limit / window_s)


def seconds_to(level: float, target: float, limit: int, window_s: float) -> float:
    """How long until a bucket at ``level`` reaches ``target`` (0 when it is there)."""
    return max(0.0, (target - level) * window_s / limit)
