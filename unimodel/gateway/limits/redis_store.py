"""The Redis limit store (``--redis``): the buckets of ``store.py``, exact across every replica.

Each admission is one Lua script (one round trip): it reads every bucket the call draws from, refills it to
Redis's own clock (``TIME``, so replicas' clocks never matter), checks them all and the in-flight cap, and
only then takes the cost from each and adds the concurrency lease, or takes nothing. The end of a request is
one more script (give back, free the lease). Redis runs a script to its end before it runs any other command,
so no other replica's check can fall between our check and our write: a read-then-write from Python would
leave that gap open (two replicas both read "3 of 4 used" and both admit), which is how limits leak across
replicas. A bucket's key expires when it would have refilled to full, and a lease when it runs out, so
nothing outlives its use; a missing bucket is a full one.

An in-flight lease is short (``lease_s``, a minute) and renewed while its request runs, in one batched script
per third of a lease for every running request of the replica (``gateway/leases.py``): a replica that dies
frees its slots within a minute. A release that fails (Redis paused or restarting as the request ends) is
retried in the background until it lands or the lease has expired anyway; the lease guards it (the script gives
back only when it removed the lease), so a release that ran although its reply was lost gives back once. A
release without a lease (tokens only) is retried only when it was never sent (a double refund would leak); an
admission whose reply was lost is undone the same way, in case it ran.

Every call is bounded (``timeout_s`` on the socket, connect and the whole call); the client library retries
only a broken pooled connection, once (a reply lost after the script ran would count a call twice: limits err
towards refusing, never towards leaking). When Redis cannot answer, :class:`StoreUnavailable` is raised at once
and for ``backoff_s`` after (no request waits on a dead Redis), the outage is logged once and counted; the
connection pool reconnects on the first call after Redis is back. What ``/ready`` shows of Redis is the newest
of what the calls saw and a cached PING (``gateway/redis_health.py``), so a quiet gateway tells an outage too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, Optional

from unimodel.gateway.leases import Leases
from unimodel.gateway.redis_health import RedisHealth, outage_errors
from unimodel.gateway.limits.policy import Plan
from unimodel.gateway.limits.store import Decision, StoreUnavailable

log = logging.getLogger("unimodel.limits")

# A bucket's level now: its stored level refilled for the time since it was written (a missing bucket is full).
_REFILLED = """
local function refilled(key, limit, window, now)
  local state = redis.call('HMGET', key, 'l', 't')
  if not state[1] then return limit end
  local level = tonumber(state[1])
  local elapsed = now - tonumber(state[2])
  if elapsed > 0 then level = math.min(limit, level + elapsed * limit / window) end
  return level
end
"""

# Both scripts: KEYS are the call's buckets, then its in-flight set; every key shares the key's {hash tag}.
ACQUIRE = _REFILLED + """
pcall(redis.replicate_commands)  -- writes after TIME: needed on Redis < 5, the default since
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local window, n, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local lease, lease_ms = ARGV[4], tonumber(ARGV[5])
local levels, ok, full = {}, 1, 0
for i = 1, n do
  local limit, cost = tonumber(ARGV[4 + 2 * i]), tonumber(ARGV[5 + 2 * i])
  local level = refilled(KEYS[i], limit, window, now)
  levels[i] = level
  if level < cost then ok = 0 end
end
if ok == 1 and cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[n + 1], '-inf', now)
  if redis.call('ZCARD', KEYS[n + 1]) >= cap then ok, full = 0, 1 end
end
if ok == 1 then
  for i = 1, n do
    local limit, cost = tonumber(ARGV[4 + 2 * i]), tonumber(ARGV[5 + 2 * i])
    levels[i] = levels[i] - cost
    redis.call('HSET', KEYS[i], 'l', string.format('%.17g', levels[i]), 't', string.format('%.17g', now))
    redis.call('PEXPIRE', KEYS[i], math.ceil((limit - levels[i]) * window / limit) + 1000)
  end
  if cap > 0 then
    redis.call('ZADD', KEYS[n + 1], string.format('%.17g', now + lease_ms), lease)
    redis.call('PEXPIRE', KEYS[n + 1], math.ceil(lease_ms) + 1000)
  end
end
local out = {ok, full}
for i = 1, n do out[i + 2] = string.format('%.17g', levels[i]) end
return out
"""

RELEASE = _REFILLED + """
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local window, n, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
-- the lease guards the give-back: a release that runs twice (retried after its reply was lost) gives back once
if lease ~= '' and redis.call('ZREM', KEYS[n + 1], lease) == 0 then return 0 end
for i = 1, n do
  local limit, back = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  local level = math.min(limit, refilled(KEYS[i], limit, window, now) + back)
  if level >= limit then
    redis.call('DEL', KEYS[i])
  else
    redis.call('HSET', KEYS[i], 'l', string.format('%.17g', level), 't', string.format('%.17g', now))
    redis.call('PEXPIRE', KEYS[i], math.ceil((limit - level) * window / limit) + 1000)
  end
end
return 1
"""

# KEYS: in-flight sets; ARGV: the lease's ms, then per key the number of its leases and the leases. Pushes each
# lease still in its set a full lease ahead (a lease gone — expired, freed — is not brought back: its slot may
# be someone else's now) and returns the positions (0-based, over all leases) of those gone.
RENEW = """
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local lease_ms = tonumber(ARGV[1])
local score = string.format('%.17g', now + lease_ms)
local lost, a, pos = {}, 2, 0
for i = 1, #KEYS do
  local n, held = tonumber(ARGV[a]), 0
  a = a + 1
  for j = 1, n do
    if redis.call('ZSCORE', KEYS[i], ARGV[a]) then
      redis.call('ZADD', KEYS[i], 'XX', score, ARGV[a])
      held = held + 1
    else
      lost[#lost + 1] = pos
    end
    a, pos = a + 1, pos + 1
  end
  if held > 0 and redis.call('PTTL', KEYS[i]) < lease_ms + 1000 then
    redis.call('PEXPIRE', KEYS[i], math.ceil(lease_ms) + 1000)
  end
end
return lost
"""


class _NotSent(StoreUnavailable):
    """Refused before anything reached Redis (not started, or within the backoff after a failure)."""


class RedisStore:
    remote = True

    def __init__(self, url: str, prefix: str = "unimodel:", *, timeout_s: float = 0.25, lease_s: float = 60.0,
                 backoff_s: float = 1.0, drain_s: float = 3.0) -> None:
        self.url = url
        self.prefix = prefix + "limits:"
        self.timeout_s = timeout_s
        self.lease_ms = lease_s * 1000.0
        self.backoff_s = backoff_s
        self._client: Any = None
        self._acquire: Any = None
        self._release: Any = None
        self._renew: Any = None
        # (in-flight set, lease) of this replica's running requests, renewed in the background
        self.leases: Leases[tuple[str, str]] = Leases("rate-limit", lease_s, self._renew_batch, drain_s=drain_s)
        self._errors: tuple[type[BaseException], ...] = ()
        self._down_since: Optional[float] = None
        self._retry_at = 0.0
        self.outages = 0
        self.failed_calls = 0
        self.health = RedisHealth(timeout_s)

    async def start(self) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        self._errors = outage_errors()
        # one immediate retry on a broken connection (a pooled one Redis dropped while it restarted), none on a
        # timeout; the whole call stays under timeout_s either way
        retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
        self._client = aioredis.from_url(self.url, socket_timeout=self.timeout_s,
                                         socket_connect_timeout=self.timeout_s, retry=retry)
        self._acquire = self._client.register_script(ACQUIRE)
        self._release = self._client.register_script(RELEASE)
        self._renew = self._client.register_script(RENEW)
        self.leases.start()

    async def aclose(self) -> None:
        await self.leases.aclose()
        await self.health.aclose()
        client, self._client = self._client, None
        if client is not None:
            close = getattr(client, "aclose", None) or client.close  # redis-py < 5.0.1 names it close
            await close()

    @property
    def up(self) -> bool:
        return self._down_since is None

    def status(self) -> dict[str, Any]:
        return {"store": "redis", **self.health.status(), "outages": self.outages,
                "failed_calls": self.failed_calls, **self.leases.status()}

    async def check(self) -> bool:
        """Whether Redis answers now (cached, bounded: ``RedisHealth.check``)."""
        client = self._client
        if client is None:
            return False
        return await self.health.check(client.ping)

    async def acquire(self, plan: Plan, lease: str) -> Decision:
        keys = [self.prefix + b.id for b in plan.buckets]
        args: list[Any] = [plan.window_s * 1000.0, len(plan.buckets), plan.max_concurrent, lease, self.lease_ms]
        for b in plan.buckets:
            args += [b.limit, b.cost]
        held: Optional[tuple[str, str]] = None
        if plan.max_concurrent and plan.concurrency_id is not None:
            keys.append(self.prefix + plan.concurrency_id)
            held = (keys[-1], lease)
        try:
            out = await self._call(self._acquire, keys, args)
        except _NotSent:
            raise
        except StoreUnavailable:
            if held is not None:  # it may still run (a reply lost, a paused Redis): undo it if it did
                undo = self._release_args(plan, [float(b.cost) for b in plan.buckets], lease)
                self.leases.retry(lambda: self._call(self._release, *undo),
                                  time.monotonic() + self.lease_ms / 1000.0 + self.timeout_s)
            raise
        decision = Decision(bool(int(out[0])), tuple(float(x) for x in out[2:]), concurrency_full=bool(int(out[1])))
        if held is not None and decision.allowed:
            self.leases.hold(held)
        return decision

    async def release(self, plan: Plan, returns: Sequence[float], lease: Optional[str]) -> None:
        if lease and plan.max_concurrent and plan.concurrency_id is not None:
            expires = self.leases.drop((self.prefix + plan.concurrency_id, lease))
        else:
            lease, expires = None, time.monotonic() + plan.window_s  # past it, a refund may be moot
        call = self._release_args(plan, returns, lease)
        if not call[0]:
            return
        try:
            await self._call(self._release, *call)
        except StoreUnavailable as exc:
            # guarded by its lease, a release may run twice; without one, only if it never reached Redis
            if lease is not None or isinstance(exc, _NotSent):
                self.leases.retry(lambda: self._call(self._release, *call), expires)
            raise

    def _release_args(self, plan: Plan, returns: Sequence[float],
                      lease: Optional[str]) -> tuple[list[str], list[Any]]:
        keys: list[str] = []
        args: list[Any] = []
        for b, back in zip(plan.buckets, returns):
            if back != 0:
                keys.append(self.prefix + b.id)
                args += [b.limit, back]
        if lease and plan.max_concurrent and plan.concurrency_id is not None:
            keys.append(self.prefix + plan.concurrency_id)
        else:
            lease = None
        return keys, [plan.window_s * 1000.0, len(args) // 2, lease or "", *args]

    async def _renew_batch(self, items: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """Renew ``items`` (in-flight set, lease) in one script; the ones no longer in their set."""
        by_key: dict[str, list[str]] = {}
        for key, lease in items:
            by_key.setdefault(key, []).append(lease)
        args: list[Any] = [self.lease_ms]
        order: list[tuple[str, str]] = []
        for key, leases in by_key.items():
            args += [len(leases), *leases]
            order += [(key, lease) for lease in leases]
        lost = await self._call(self._renew, list(by_key), args)
        return [order[int(i)] for i in lost]

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        if self._client is None:
            raise _NotSent("the limit store is not started")
        if self._down_since is not None and time.monotonic() < self._retry_at:
            raise _NotSent("Redis is down")
        try:
            result = await asyncio.wait_for(script(keys=keys, args=args), self.timeout_s)
        except self._errors as exc:
            self._failed(exc)
            self.health.saw(False, exc)
            raise StoreUnavailable("Redis is down") from exc
        self.health.saw(True)
        if self._down_since is not None:
            log.warning("Redis is back for rate limits after %.1f s", time.monotonic() - self._down_since)
            self._down_since = None
        return result

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self.failed_calls += 1
        self._retry_at = now + self.backoff_s
        if self._down_since is None:
            self._down_since = now
            self.outages += 1
            log.warning("Redis does not answer for rate limits (%s: %s); each request now follows "
                        "--limits-on-redis-failure until it is back", type(exc).__name__, exc)
