"""Stored responses in Redis (``--responses-store redis``, on ``--redis``): shared by every replica, expired by
Redis itself.

One hash per response, ``{prefix}resp:{response_id}:{owner}`` (an id has no ``:``, so the key is unambiguous),
with the record's fields: ``o`` owner, ``c``/``e`` created and expiry times, ``s`` status, ``r`` the response's
JSON, ``i`` the input items' JSON. It is written in one ``MULTI``/``EXEC`` (delete, set, expire) with a TTL to its
expiry, so Redis drops it on time; the expiry is also checked on every read, against the store's clock. An update
(a background response moving on, a cancel) is one Lua script that checks the record is live and in the expected
status, and that the new response keeps it within the size bound, before it sets anything.

The client is built as the idempotency store builds its own (``gateway/idempotency/redis_store.py``): bounded
socket and connect timeouts, one immediate retry on a connection Redis closed; every Redis failure becomes
:class:`~unimodel.errors.ResponseStoreUnavailableError`.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, Optional

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from unimodel.errors import ResponseStoreUnavailableError
from unimodel.shapes.responses.store import Encoded, ResponseStore, Status, StoredResponse, decoded

RETRY_AFTER_S = 2.0

# KEYS[1]; ARGV[1]: now; ARGV[2]: the new status; ARGV[3]: the new response ('' keeps it); ARGV[4]: the largest
# record in bytes; ARGV[5…]: the statuses it may be in (none: any). 1: set; 0: not live or not in them; below 0:
# the new response would make it too large (-1 less the size of its input items).
_UPDATE = """
local e = redis.call('HGET', KEYS[1], 'e')
if not e or tonumber(e) <= tonumber(ARGV[1]) then return 0 end
if #ARGV > 4 then
  local s, ok = redis.call('HGET', KEYS[1], 's'), false
  for i = 5, #ARGV do if s == ARGV[i] then ok = true end end
  if not ok then return 0 end
end
if ARGV[3] ~= '' then
  local items = redis.call('HSTRLEN', KEYS[1], 'i')
  if #ARGV[3] + items > tonumber(ARGV[4]) then return -1 - items end
  redis.call('HSET', KEYS[1], 'r', ARGV[3])
end
redis.call('HSET', KEYS[1], 's', ARGV[2])
return 1
"""
# KEYS[1]; ARGV[1]: now. 1: deleted a live record; 0: none (an expired one is deleted all the same)
_DELETE = """
local e = redis.call('HGET', KEYS[1], 'e')
if not e then return 0 end
redis.call('DEL', KEYS[1])
if tonumber(e) <= tonumber(ARGV[1]) then return 0 end
return 1
"""


class RedisResponseStore(ResponseStore):
    kind = "redis"

    def __init__(self, url: str, prefix: str, *, timeout_s: float = 5.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.url, self.prefix = url, prefix + "resp:"
        self.timeout_s = timeout_s
        self._client: Optional[Redis] = None

    async def start(self) -> None:
        if self._client is None:
            self._client = Redis.from_url(self.url, socket_timeout=self.timeout_s,
                                          socket_connect_timeout=self.timeout_s, retry=Retry(NoBackoff(), 1))
            self._update_script = self._client.register_script(_UPDATE)
            self._delete_script = self._client.register_script(_DELETE)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def client(self) -> Redis:
        if self._client is None:
            raise ResponseStoreUnavailableError("stored responses are unavailable: the store is not started",
                                                retry_after=RETRY_AFTER_S)
        return self._client

    def _key(self, owner: str, response_id: str) -> str:
        return f"{self.prefix}{response_id}:{owner}"

    async def _put(self, record: StoredResponse, encoded: Encoded) -> None:
        ttl_ms = max(1, math.ceil((record.expires_at - self.clock()) * 1000))
        key = self._key(record.owner, record.response_id)
        fields = {"o": record.owner, "c": repr(record.created_at), "e": repr(record.expires_at), "s": record.status,
                  "r": encoded.response, "i": encoded.input_items}
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(key).hset(key, mapping=fields).pexpire(key, ttl_ms)  # type: ignore[arg-type]
        await self._call(pipe.execute())

    async def _get(self, owner: str, response_id: str, now: float) -> Optional[StoredResponse]:
        held = await self._call(self.client.hgetall(self._key(owner, response_id)))
        if not held:
            return None
        try:
            if held[b"o"].decode() != owner or float(held[b"e"]) <= now:
                return None
            return decoded(response_id, owner, float(held[b"c"]), float(held[b"e"]), held[b"s"].decode(),
                           held[b"r"], held[b"i"])
        except (KeyError, ValueError) as exc:  # (orjson's decode error is a ValueError)
            raise ResponseStoreUnavailableError(
                "stored responses are unavailable: the stored record cannot be read by this version") from exc

    async def _update(self, owner: str, response_id: str, status: Status, response: Optional[bytes],
                      expect: Optional[frozenset[str]], now: float) -> bool:
        if expect is not None and not expect:
            return False  # no status allowed: nothing can match
        args: list[Any] = [repr(now), status, response if response is not None else b"", self.max_bytes,
                           *sorted(expect or ())]
        done = int(await self._call(self._update_script(keys=[self._key(owner, response_id)], args=args)))
        if done < 0 and response is not None:
            self._bounded(response, -1 - done)  # raises: with its input items it is too large
        return done == 1

    async def _delete(self, owner: str, response_id: str, now: float) -> bool:
        done = await self._call(self._delete_script(keys=[self._key(owner, response_id)], args=[repr(now)]))
        return int(done) == 1

    async def _call(self, pending: Any) -> Any:
        try:
            return await pending
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise ResponseStoreUnavailableError(
                f"stored responses are unavailable: Redis did not answer ({type(exc).__name__})",
                retry_after=RETRY_AFTER_S) from exc
