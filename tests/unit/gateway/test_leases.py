"""The lease keeper of the Redis stores (``gateway/leases.py``): renewal in batches, leases lost in Redis,
releases retried until they land or are moot, the bounded queue and the bounded wait at shutdown; and the
Redis scripts that make a retried release safe (a release that runs twice gives back once)."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Sequence

import pytest

from tests.support.redis_server import RedisServer
from unimodel.gateway import leases as leases_module
from unimodel.gateway.idempotency import MemoryStore
from unimodel.gateway.idempotency import RedisStore as IdempotencyRedis
from unimodel.gateway.idempotency.store import Claimed, InFlight
from unimodel.gateway.leases import Leases
from unimodel.gateway.limits.policy import Bucket, Plan
from unimodel.gateway.limits.redis_store import RedisStore

pytestmark = pytest.mark.timeout(60)


class Renewals:
    """A fake ``renew``: records its batches; fails while ``down``; reports ``gone`` items as lost."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.down = False
        self.gone: set[str] = set()

    async def __call__(self, items: Sequence[str]) -> list[str]:
        if self.down:
            raise ConnectionError("down")
        self.batches.append(list(items))
        return [i for i in items if i in self.gone]


async def test_held_leases_are_renewed_in_batches_and_a_lost_one_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leases_module, "BATCH", 2)
    renew = Renewals()
    keeper: Leases[str] = Leases("test", 0.3, renew)
    keeper.start()
    try:
        for item in ("a", "b", "c"):
            keeper.hold(item)
        await asyncio.sleep(0.25)  # one period is 0.1 s
        assert renew.batches[:2] == [["a", "b"], ["c"]]
        renew.gone.add("b")
        await asyncio.sleep(0.25)
        assert keeper.status()["leases_held"] == 2 and keeper.counts["lost"] == 1
        keeper.drop("a")
        renew.batches.clear()
        await asyncio.sleep(0.25)
        assert renew.batches and all(batch == ["c"] for batch in renew.batches)
        renew.down = True  # a failed renewal keeps the leases, and is counted
        await asyncio.sleep(0.25)
        assert keeper.status()["leases_held"] == 1 and keeper.counts["renew_failed"] >= 1
    finally:
        await keeper.aclose()


async def test_drop_says_when_the_lease_expires_at_the_latest() -> None:
    now = [100.0]
    keeper: Leases[str] = Leases("test", 60, Renewals(), clock=lambda: now[0])
    keeper.hold("a")
    now[0] = 130.0
    assert keeper.drop("a") == 160.0  # taken at 100, never renewed: gone at 160
    assert keeper.drop("never-held") == 190.0


async def test_a_failed_release_is_retried_until_it_lands() -> None:
    keeper: Leases[str] = Leases("test", 60, Renewals())
    keeper.start()
    tries: list[int] = []
    landed = asyncio.Event()

    async def attempt() -> None:
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionError("still down")
        landed.set()

    ended: list[bool] = []
    try:
        keeper.retry(attempt, time.monotonic() + 60, on_end=lambda: ended.append(True))
        await asyncio.wait_for(landed.wait(), 10)
        await asyncio.sleep(0.01)
        assert len(tries) == 3 and keeper.counts["release_retried"] == 1 and ended == [True]
        assert keeper.status()["releases_pending"] == 0
    finally:
        await keeper.aclose()


async def test_a_release_past_its_lease_is_given_up_and_the_queue_is_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(leases_module, "MAX_PENDING", 3)
    now = [0.0]
    keeper: Leases[str] = Leases("test", 60, Renewals(), clock=lambda: now[0])  # not started: nothing runs

    async def never() -> None:
        raise ConnectionError("down")

    ended: list[int] = []
    for i in range(5):
        keeper.retry(never, until=10.0 + i, on_end=functools.partial(ended.append, i))
    assert keeper.status()["releases_pending"] == 3 and keeper.counts["release_dropped"] == 2 and ended == [0, 1]
    now[0] = 13.5  # past the first two of those left: moot, their leases have expired in Redis
    assert not await keeper._flush()
    assert keeper.counts["release_expired"] == 2 and keeper.status()["releases_pending"] == 1


async def test_shutdown_waits_a_bounded_time_for_pending_releases() -> None:
    keeper: Leases[str] = Leases("test", 60, Renewals(), drain_s=0.5)
    keeper.start()
    landed: list[str] = []

    async def lands() -> None:
        landed.append("ok")

    async def never() -> None:
        await asyncio.sleep(0.01)
        raise ConnectionError("down")

    keeper.retry(never, time.monotonic() + 60)
    keeper.retry(lands, time.monotonic() + 60)
    began = time.monotonic()
    await keeper.aclose()
    assert time.monotonic() - began < 3
    assert keeper.counts["release_dropped"] >= 1 and keeper.status()["releases_pending"] == 0


def plan_for_test(prefix: str) -> Plan:
    tpm = Bucket(id=f"{prefix}tpm", unit="tokens", scope="key", limit=1000, cost=100)
    return Plan(key="k1", window_s=60.0, buckets=(tpm,), max_concurrent=2, concurrency_id=f"{prefix}conc")


async def test_a_release_that_runs_twice_gives_back_once(redis_server: RedisServer) -> None:
    """A release whose reply was lost is retried: the lease guards the give-back, so the retry changes nothing."""
    store = RedisStore(redis_server.url, f"t{uuid.uuid4().hex[:8]}:", timeout_s=2.0)
    await store.start()
    try:
        plan = plan_for_test("x:")
        assert (await store.acquire(plan, "lease-1")).allowed
        assert (await store.acquire(plan, "lease-2")).allowed  # 800 left
        assert store.leases.status()["leases_held"] == 2
        await store.release(plan, [90.0], "lease-1")  # used 10 of its 100
        await store.release(plan, [90.0], "lease-1")  # the same release again: nothing more given back
        level = (await store.acquire(plan, "lease-3")).levels[0]
        assert 789 < level < 791  # 1000 - 100 - 100 + 90 - 100 (plus a hair of refill)
        assert store.leases.status()["leases_held"] == 2
    finally:
        await store.aclose()


async def test_a_claim_release_or_store_that_runs_twice_does_no_harm(redis_server: RedisServer) -> None:
    store = IdempotencyRedis(redis_server.url, f"t{uuid.uuid4().hex[:8]}:", 60, 60)
    await store.start()
    try:
        claim = await store.claim("k", "fp")
        assert isinstance(claim, Claimed) and store.leases.status()["leases_held"] == 1
        await store.finish("k", claim.token, b"record")
        await store.release("k", claim.token)  # a late release of the same claim does not drop the record
        await store.finish("k", claim.token, b"other")  # nor does a late store overwrite it
        assert (await store.claim("k", "fp")).record == b"record"  # type: ignore[union-attr]
        assert store.leases.status()["leases_held"] == 0
    finally:
        await store.aclose()


async def test_a_claim_in_memory_lasts_as_long_as_its_request() -> None:
    now = [0.0]
    store = MemoryStore(60, clock=lambda: now[0])  # no claim TTL: the process holding it is the one renewing it
    claim = await store.claim("k", "fp")
    assert isinstance(claim, Claimed)
    now[0] = 10 * 24 * 3600.0
    assert await store.claim("k", "fp") == InFlight("fp")
    await store.release("k", claim.token)
    assert isinstance(await store.claim("k", "fp"), Claimed)
