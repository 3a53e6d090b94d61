"""Idempotency keys in this process's memory: one event loop, so a claim is atomic without a lock.

Stored responses live in an LRU bounded by count and by bytes (the least recently used go first) and expire
after the TTL (checked when a key is read, and at the LRU's cold end on every insert). In-flight claims are
few (one per running request) and are not evicted; a waiter awaits the claim's own :class:`asyncio.Event`.
A claim lasts until its request ends (no replica can die holding it: it lives and dies with this process, which
is also the one that would renew it), unless ``claim_ttl_s`` is given.
Hand-written: a dict and an ``OrderedDict`` are the whole of it, and ``cachetools``' TTL cache has no byte bound
and no notion of an in-flight entry to wait on.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from unimodel.gateway.idempotency.store import Claimed, ClaimResult, Done, InFlight


@dataclass(eq=False)
class _Claim:
    token: str
    fingerprint: str
    expires_at: float
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class MemoryStore:
    kind = "memory"
    remote = False

    def __init__(self, ttl_s: float, claim_ttl_s: Optional[float] = None, max_entries: int = 10_000,
                 max_bytes: int = 256 * 1024 * 1024, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.claim_ttl_s = math.inf if claim_ttl_s is None else claim_ttl_s
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._clock = clock
        self._claims: dict[str, _Claim] = {}
        self._done: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self.evicted = 0

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        for claim in self._claims.values():
            claim.ended.set()
        self._claims.clear()
        self._done.clear()
        self._bytes = 0

    async def claim(self, key: str, fingerprint: str) -> ClaimResult:
        now = self._clock()
        stored = self._done.get(key)
        if stored is not None:
            if stored[0] > now:
                self._done.move_to_end(key)
                return Done(stored[1])
            self._drop(key)
        claim = self._claims.get(key)
        if claim is not None:
            if claim.expires_at > now:
                return InFlight(claim.fingerprint)
            claim.ended.set()
        token = secrets.token_hex(16)
        self._claims[key] = _Claim(token, fingerprint, now + self.claim_ttl_s)
        return Claimed(token)

    async def wait(self, key: str, timeout_s: float) -> None:
        claim = self._claims.get(key)
        if claim is None or timeout_s <= 0:
            return
        try:
            await asyncio.wait_for(claim.ended.wait(), timeout=min(timeout_s, max(0.0, claim.expires_at
                                                                                   - self._clock())))
        except asyncio.TimeoutError:
            pass

    async def finish(self, key: str, token: str, record: bytes) -> None:
        claim = self._end_claim(key, token)
        if claim is None:
            return
        if key in self._done:
            self._drop(key)
        if len(record) <= self.max_bytes and self.max_entries > 0:
            self._done[key] = (self._clock() + self.ttl_s, record)
            self._bytes += len(record)
            self._evict()
        claim.ended.set()

    async def release(self, key: str, token: str) -> None:
        claim = self._end_claim(key, token)
        if claim is not None:
            claim.ended.set()

    async def check(self) -> bool:
        return True  # this process's memory

    def status(self) -> dict[str, Any]:
        return {"store": self.kind, "in_flight": len(self._claims), "stored": len(self._done),
                "stored_bytes": self._bytes, "evicted": self.evicted}

    def _end_claim(self, key: str, token: str) -> _Claim | None:
        claim = self._claims.get(key)
        if claim is None or claim.token != token:
            return None
        del self._claims[key]
        return claim

    def _drop(self, key: str) -> None:
        _, record = self._done.pop(key)
        self._bytes -= len(record)

    def _evict(self) -> None:
        now = self._clock()
        while self._done:
            key, (expires_at, _) = next(iter(self._done.items()))
            if expires_at > now and len(self._done) <= self.max_entries and self._bytes <= self.max_bytes:
                return
            self._drop(key)
            if expires_at > now:
                self.evicted += 1
