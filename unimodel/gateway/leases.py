"""What a Redis store holds for a running request (an in-flight slot, an idempotency claim), kept exactly as
long as the request runs: renewed while it runs, given back for sure when it ends.

A lease in Redis lives ``lease_s`` (about a minute) unless renewed, so a replica that dies frees its slots and
claims a minute later, not after a long fixed TTL. While its request runs, the lease is renewed every third of
``lease_s`` by one background task per store, in batches (one Redis call per ``BATCH`` leases, whatever the
number of requests): nothing is added to the request's own path but a dict insert and delete. A renewal that
fails is tried again a second later; the lease still has two thirds of its life.

A release that fails (Redis paused, restarting, a timeout) is queued and retried in the background with
jittered exponential backoff (0.25 s doubling to 2 s) until it succeeds or the lease would have expired anyway,
so a 2-second Redis pause at the end of a request does not leave its slot or claim taken. The store's scripts
make every retried release idempotent (it checks that the lease or claim is still there before giving anything
back), so a release that did run although its reply was lost, then runs again, gives back once. The queue is bounded
(``MAX_PENDING``, the oldest dropped and counted: their leases expire on their own); ``aclose`` waits at most
``drain_s`` for it.

Hand-written: retry libraries (tenacity, backoff) retry one call inline, in the request that made it; what is
needed here is one task per store that renews every running request's lease in one batch and retries the
releases of requests that have already ended.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Optional, TypeVar

log = logging.getLogger("unimodel.leases")

T = TypeVar("T", bound=Hashable)

BATCH = 256  # leases renewed per Redis call
MAX_PENDING = 10_000  # releases queued for a retry at most (one per request that ended while Redis was away)
RETRY_CONCURRENCY = 16  # queued releases tried at once when Redis is back
FIRST_RETRY_S = 0.25
MAX_RETRY_S = 2.0
RENEW_RETRY_S = 1.0  # after a failed renewal


@dataclass(slots=True)
class _Pending:
    attempt: Callable[[], Awaitable[Any]]
    until: float  # monotonic time after which it is moot (the lease has expired in Redis)
    on_end: Optional[Callable[[], None]] = None  # told once it leaves the queue, whatever the outcome


class Leases(Generic[T]):
    """The leases one store holds: ``hold`` when taken, ``drop`` when the request ends; ``retry`` a release
    that failed. ``renew(items)`` renews a batch in Redis and returns the items no longer held there."""

    def __init__(self, name: str, lease_s: float, renew: Callable[[Sequence[T]], Awaitable[Collection[T]]], *,
                 drain_s: float = 3.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.lease_s, self.drain_s = name, lease_s, drain_s
        self.period_s = lease_s / 3
        self._renew = renew
        self._clock = clock
        self._held: dict[T, float] = {}  # item → when it was last taken or renewed (monotonic)
        self._pending: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.counts = {"renew_failed": 0, "lost": 0, "release_retried": 0, "release_expired": 0,
                       "release_dropped": 0}

    # ---- per request (no I/O) -----------------------------------------------------------------------

    def hold(self, item: T) -> None:
        """Renew ``item`` from now on (its lease was just taken)."""
        if not self._closed:
            self._held[item] = self._clock()

    def drop(self, item: T) -> float:
        """Stop renewing ``item``; the monotonic time by which its lease expires in Redis at the latest."""
        since = self._held.pop(item, None)
        return (since if since is not None else self._clock()) + self.lease_s

    def retry(self, attempt: Callable[[], Awaitable[Any]], until: float,
              on_end: Optional[Callable[[], None]] = None) -> None:
        """Call ``attempt()`` in the background until it returns, or until ``until`` (monotonic) has passed;
        then ``on_end()``."""
        pending = _Pending(attempt, until, on_end)
        if self._closed:
            self._end(pending, "release_dropped")
            return
        if len(self._pending) >= MAX_PENDING:
            self._end(self._pending.popleft(), "release_dropped")
        self._pending.append(pending)
        self._wake.set()

    def _end(self, pending: _Pending, outcome: str) -> None:
        self.counts[outcome] += 1
        if pending.on_end is not None:
            pending.on_end()

    def status(self) -> dict[str, Any]:
        return {"leases_held": len(self._held), "releases_pending": len(self._pending), **self.counts}

    # ---- the background ------------------------------------------------------------------------------

    def start(self) -> None:
        self._closed = False
        if not self._tasks:
            self._tasks = [asyncio.ensure_future(self._renewing()), asyncio.ensure_future(self._retrying())]

    async def aclose(self) -> None:
        """Stop renewing (the leases of requests still running expire on their own), then try the queued
        releases for at most ``drain_s``."""
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._held.clear()
        deadline = self._clock() + self.drain_s
        wait = 0.05
        while self._pending and self._clock() < deadline:
            try:
                if await asyncio.wait_for(self._flush(), max(0.01, deadline - self._clock())):
                    break
            except asyncio.TimeoutError:
                break
            await asyncio.sleep(min(wait, max(0.0, deadline - self._clock())))
            wait = min(wait * 2, 0.5)
        if self._pending:
            log.warning("%d %s releases could not reach Redis before shutdown; their leases expire on their "
                        "own within %.0f s", len(self._pending), self.name, self.lease_s)
            while self._pending:
                self._end(self._pending.popleft(), "release_dropped")

    async def _renewing(self) -> None:
        wait = self.period_s
        while True:
            await asyncio.sleep(wait)
            wait = self.period_s
            items = list(self._held)
            for start in range(0, len(items), BATCH):
                batch = items[start:start + BATCH]
                began = self._clock()
                try:
                    lost = await self._renew(batch)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the store's outage error: tried again soon
                    self.counts["renew_failed"] += 1
                    log.debug("renewing %s leases failed: %s", self.name, exc)
                    wait = min(self.period_s, RENEW_RETRY_S)
                    break
                for item in batch:
                    if item in self._held:
                        self._held[item] = began
                for item in lost:
                    if self._held.pop(item, None) is not None:
                        self.counts["lost"] += 1
                if lost:
                    log.warning("%d %s leases had expired in Redis while their requests still ran (Redis was "
                                "away longer than the lease)", len(lost), self.name)

    async def _retrying(self) -> None:
        wait = FIRST_RETRY_S
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                wait = FIRST_RETRY_S
            await asyncio.sleep(random.uniform(wait / 2, wait))
            wait = FIRST_RETRY_S if await self._flush() else min(wait * 2, MAX_RETRY_S)

    async def _flush(self) -> bool:
        """Try the queued releases (the first alone, as a probe, then the rest a few at a time); False when one
        failed (it stays queued)."""
        now = self._clock()
        while self._pending and self._pending[0].until <= now:
            self._end(self._pending.popleft(), "release_expired")
        size = 1
        while self._pending:
            batch = [self._pending.popleft() for _ in range(min(size, len(self._pending)))]
            try:
                results = await asyncio.gather(*(p.attempt() for p in batch), return_exceptions=True)
            except BaseException:  # cancelled (shutdown): they stay queued for aclose to try
                self._pending.extendleft(reversed(batch))
                raise
            failed: list[_Pending] = []
            now, ok = self._clock(), True
            for p, result in zip(batch, results):
                if not isinstance(result, BaseException):
                    self._end(p, "release_retried")
                    continue
                ok = False
                if p.until <= now:
                    self._end(p, "release_expired")
                else:
                    failed.append(p)
            if not ok:  # to the back: one release that cannot land (a script error) holds up none of the others
                self._pending.extend(failed)
                return False
            size = RETRY_CONCURRENCY
        return True
