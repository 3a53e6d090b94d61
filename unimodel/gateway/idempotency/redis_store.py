"""Idempotency keys in Redis, shared by every replica: one key per (caller, Idempotency-Key).

The key holds ``I<token><fingerprint>`` while its first request runs (a claim with its own short TTL, so a
replica that died frees it) and ``D<record>`` once that request succeeded (for the idempotency TTL). The claim's
TTL (``claim_ttl_s``, a minute) is renewed while its request runs, one batched script per third of it for all
of this replica's claims (``gateway/leases.py``). A release or store that fails (Redis paused as the request
ends) is retried in the background until it lands or the claim has expired anyway (both scripts check the
claim's token, so running twice does no harm); a record waits for it only within ``MAX_PENDING_BYTES``, past
that the claim is released instead. A claim whose reply was lost is released the same way, in case it ran.
Claiming is one round trip: a Lua script returns what the key holds, or sets the claim when it is absent —
``SET NX`` and a ``GET`` made atomic, so of any number of concurrent duplicates on any number of replicas
exactly one runs. Storing and releasing check the claim's token in a script too, so a request whose claim
expired never overwrites or frees another's. A duplicate waits by polling the key (20 ms, doubling to 200 ms):
it only happens while a duplicate is actually in flight, and it needs no extra connection per waiter as
pub/sub would. Every Redis failure becomes :class:`StoreUnavailableError`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence
from typing import Any, Optional

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from unimodel.gateway.idempotency.store import Claimed, ClaimResult, Done, InFlight, StoreUnavailableError
from unimodel.gateway.leases import Leases
from unimodel.gateway.redis_health import RedisHealth

_TOKEN_CHARS = 32  # secrets.token_hex(16)
MAX_PENDING_BYTES = 64 * 1024 * 1024  # records kept for a retried store at most, all together

# KEYS[1]: the key; ARGV[1]: the claim value; ARGV[2]: the claim's TTL in ms
_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if cur then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
# ARGV[1]: 'I' .. token; ARGV[2]: the stored value; ARGV[3]: its TTL in ms. Stores when the claim is ours, or
# when it expired and nobody claimed the key since.
_FINISH = """
local cur = redis.call('GET', KEYS[1])
if cur == false or string.sub(cur, 1, #ARGV[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""
_RELEASE = """
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, #ARGV[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS: claimed keys; ARGV[1]: the claim's TTL in ms, then 'I' .. token per key. Renews each claim still ours;
# returns the positions (0-based) of those that are not (expired, or claimed by another since).
_RENEW = """
local lost = {}
for i = 1, #KEYS do
  local cur, mine = redis.call('GET', KEYS[i]), ARGV[i + 1]
  if cur and string.sub(cur, 1, #mine) == mine then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
  else
    lost[#lost + 1] = i - 1
  end
end
return lost
"""


class RedisStore:
    kind = "redis"
    remote = True

    def __init__(self, url: str, prefix: str, ttl_s: float, claim_ttl_s: float, *, timeout_s: float = 1.0,
                 poll_s: float = 0.02, max_poll_s: float = 0.2, drain_s: float = 3.0) -> None:
        self.url, self.prefix = url, prefix + "idem:"
        self.ttl_ms, self.claim_ttl_ms = max(1, int(ttl_s * 1000)), max(1, int(claim_ttl_s * 1000))
        self.timeout_s, self.poll_s, self.max_poll_s = timeout_s, poll_s, max_poll_s
        self._client: Optional[Redis] = None
        # (key, token) of this replica's running claims, renewed in the background
        self.leases: Leases[tuple[str, str]] = Leases("idempotency", claim_ttl_s, self._renew_batch,
                                                      drain_s=drain_s)
        self._pending_bytes = 0
        self.health = RedisHealth(timeout_s)  # what /ready shows of Redis (gateway/redis_health.py)

    async def start(self) -> None:
        # one immediate retry (a pooled connection Redis closed when it restarted), no backoff: a request must
        # not wait out a Redis outage, it is served without idempotency instead
        self._client = Redis.from_url(self.url, socket_timeout=self.timeout_s,
                                      socket_connect_timeout=self.timeout_s, retry=Retry(NoBackoff(), 1))
        client = self._client
        self._claim = client.register_script(_CLAIM)
        self._finish = client.register_script(_FINISH)
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)
        self.leases.start()

    async def aclose(self) -> None:
        await self.leases.aclose()
        await self.health.aclose()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def client(self) -> Redis:
        if self._client is None:
            raise StoreUnavailableError("the Redis idempotency store is not started")
        return self._client

    async def claim(self, key: str, fingerprint: str) -> ClaimResult:
        token = secrets.token_hex(_TOKEN_CHARS // 2)
        try:
            held = await self._call(self._claim(keys=[self.prefix + key],
                                                args=[f"I{token}{fingerprint}", self.claim_ttl_ms]))
        except StoreUnavailableError:  # it may still run (a reply lost, a paused Redis): released if it did
            self.leases.retry(lambda: self._release_once(key, token),
                              time.monotonic() + self.claim_ttl_ms / 1000.0 + self.timeout_s)
            raise
        if held is not None:
            return _held(held)
        self.leases.hold((key, token))
        return Claimed(token)

    async def wait(self, key: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        delay = self.poll_s
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(delay, left))
            held = await self._call(self.client.get(self.prefix + key))
            if held is None or not bytes(held).startswith(b"I"):
                return
            delay = min(delay * 2, self.max_poll_s)

    async def finish(self, key: str, token: str, record: bytes) -> None:
        expires = self.leases.drop((key, token))
        try:
            await self._finish_once(key, token, record)
        except StoreUnavailableError:
            size = len(record)
            if self._pending_bytes + size > MAX_PENDING_BYTES:  # no room to keep it: at least free the key
                self.leases.retry(lambda: self._release_once(key, token), expires)
            else:
                self._pending_bytes += size
                self.leases.retry(lambda: self._finish_once(key, token, record), expires,
                                  on_end=lambda: self._forget(size))
            raise

    async def release(self, key: str, token: str) -> None:
        expires = self.leases.drop((key, token))
        try:
            await self._release_once(key, token)
        except StoreUnavailableError:
            self.leases.retry(lambda: self._release_once(key, token), expires)
            raise

    def status(self) -> dict[str, Any]:
        return {"store": self.kind, **self.health.status(), **self.leases.status()}

    async def check(self) -> bool:
        """Whether Redis answers now (cached, bounded: ``RedisHealth.check``)."""
        client = self._client
        if client is None:
            return False
        return await self.health.check(client.ping)

    async def _finish_once(self, key: str, token: str, record: bytes) -> None:
        await self._call(self._finish(keys=[self.prefix + key], args=[f"I{token}", b"D" + record, self.ttl_ms]))

    async def _release_once(self, key: str, token: str) -> None:
        await self._call(self._release(keys=[self.prefix + key], args=[f"I{token}"]))

    def _forget(self, size: int) -> None:
        self._pending_bytes -= size

    async def _renew_batch(self, items: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """Renew the claims ``items`` (key, token) in one script; the ones no longer ours."""
        lost = await self._call(self._renew(keys=[self.prefix + key for key, _ in items],
                                            args=[self.claim_ttl_ms, *(f"I{token}" for _, token in items)]))
        return [items[int(i)] for i in lost]

    async def _call(self, pending: Any) -> Any:
        try:
            result = await pending
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self.health.saw(False, exc)
            raise StoreUnavailableError(f"Redis: {type(exc).__name__}") from exc
        self.health.saw(True)
        return result


def _held(value: Any) -> ClaimResult:
    raw = bytes(value)
    if raw.startswith(b"D"):
        return Done(raw[1:])
    if raw.startswith(b"I"):
        return InFlight(raw[1 + _TOKEN_CHARS:].decode("ascii", "replace"))
    raise StoreUnavailableError("the idempotency key holds a value this version cannot read")
