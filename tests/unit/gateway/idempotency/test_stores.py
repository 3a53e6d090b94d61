"""The stores' contract on their own (claim, wait, finish, release, expiry, bounds), the record codec, and a
Redis outage: requests are served without idempotency, logged once, never a 500, and it comes back."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests.support.redis_server import RedisServer
from tests.unit.gateway.idempotency.conftest import CountingEngine, Harness, StoreFactory
from unimodel.config import Settings
from unimodel.gateway.idempotency import IdempotencyStage, MemoryStore, RedisStore
from unimodel.gateway.idempotency.record import RecordError, StoredResponse, decode, encode
from unimodel.gateway.idempotency.store import Claimed, Done, InFlight
from unimodel.protocol.events import (
    ContentDelta,
    Finish,
    ReasoningDelta,
    ThinkingBudgetReached,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from unimodel.compose import build_engines, build_stages


def test_the_record_codec_round_trips_every_event() -> None:
    events = (ReasoningDelta("ré"), ContentDelta("🎉 \"q\"\n"), ToolCallStart(0, "call_1", "get"),
              ToolCallArgsDelta(0, '{"a": 1}'), ToolCallEnd(0), ThinkingBudgetReached(12),
              Usage(3, 4, 2, True), Finish("tool_calls"))
    record = StoredResponse("f" * 64, "req-9", 1_700_000_000, events)
    assert decode(encode(record)) == record
    for bad in (b"", b"{}", b'{"v": 2}', b'{"v":1,"f":"x","id":"r","t":1,"e":[["zz"]]}', b"\xff"):
        with pytest.raises(RecordError):
            decode(bad)


async def test_a_store_claims_once_and_hands_over_on_finish(store_factory: StoreFactory) -> None:
    store = store_factory()
    await store.start()
    try:
        first = await store.claim("k", "fp")
        assert isinstance(first, Claimed)
        assert await store.claim("k", "fp2") == InFlight("fp")
        waiter = asyncio.create_task(store.wait("k", 5))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await store.release("k", "not-the-token")  # someone else's token changes nothing
        assert await store.claim("k", "fp") == InFlight("fp")
        await store.finish("k", first.token, b"record")
        await asyncio.wait_for(waiter, 2)
        assert await store.claim("k", "fp") == Done(b"record")
        await store.wait("k", 5)  # not in flight: returns at once
    finally:
        await store.aclose()


async def test_an_expired_claim_frees_the_key(store_factory: StoreFactory) -> None:
    store = store_factory(claim_ttl_s=0.2)
    await store.start()
    # in Redis a claim lives while its owner renews it: the stale one is a replica's that then died
    owner = store if store.kind == "memory" else store_factory(claim_ttl_s=0.2)
    try:
        if owner is not store:
            await owner.start()
        stale = await owner.claim("k", "fp")
        assert isinstance(stale, Claimed)
        if owner is not store:
            await owner.aclose()
        await store.wait("k", 5)  # returns when the claim expires, well before 5 s
        fresh = await store.claim("k", "fp")
        assert isinstance(fresh, Claimed) and fresh.token != stale.token
        await store.finish("k", stale.token, b"late")  # the stale owner can no longer store…
        await store.release("k", stale.token)  # …nor release
        assert isinstance(await store.claim("k", "fp"), InFlight)
    finally:
        await store.aclose()


async def test_the_memory_store_is_an_lru_bounded_by_count_and_bytes() -> None:
    store = MemoryStore(60, 60, max_entries=2, max_bytes=100)
    for key in ("a", "b"):
        claim = await store.claim(key, "fp")
        assert isinstance(claim, Claimed)
        await store.finish(key, claim.token, b"x" * 10)
    assert isinstance(await store.claim("a", "fp"), Done)  # a is now the most recently used
    claim = await store.claim("c", "fp")
    assert isinstance(claim, Claimed)
    await store.finish("c", claim.token, b"x" * 10)
    assert isinstance(await store.claim("b", "fp"), Claimed)  # b was evicted
    claim = await store.claim("d", "fp")
    assert isinstance(claim, Claimed)
    await store.finish("d", claim.token, b"x" * 95)  # over the byte bound with anything else
    assert store.status()["stored"] == 1 and store.status()["stored_bytes"] == 95
    assert store.status()["evicted"] >= 2


async def test_redis_down_serves_without_idempotency_logs_once_and_recovers(
        caplog: pytest.LogCaptureFixture) -> None:
    with RedisServer() as server:
        stage = IdempotencyStage(RedisStore(server.url, "outage:", 60, 60, timeout_s=0.5), outage_backoff_s=0.1)
        await stage.start()
        try:
            h = Harness(stage, CountingEngine())
            await h.complete(h.call())
            await h.complete(h.call())
            assert h.engine.calls == 1
            server.stop()
            with caplog.at_level(logging.WARNING, logger="unimodel.idempotency"):
                for _ in range(3):
                    call = h.call()
                    body = await h.complete(call)
                    assert body["object"] == "chat.completion" and call.ctx.idempotency == "unavailable"
                    await asyncio.sleep(0.15)
            assert h.engine.calls == 4
            outage_lines = [r.getMessage() for r in caplog.records
                            if r.getMessage().startswith("the idempotency store (redis) is unavailable")]
            assert len(outage_lines) == 1 and "served without idempotency" in outage_lines[0]
            assert stage.status()["available"] is False
            server.start()
            await asyncio.sleep(0.15)
            await h.complete(h.call(key="after"))
            await h.complete(h.call(key="after"))
            assert h.engine.calls == 5 and stage.status()["available"] is True
        finally:
            await stage.aclose()


async def test_redis_going_down_mid_request_does_not_fail_it() -> None:
    with RedisServer() as server:
        stage = IdempotencyStage(RedisStore(server.url, "mid:", 60, 60, timeout_s=0.5))
        await stage.start()
        try:
            h = Harness(stage, CountingEngine())
            h.engine.gate = asyncio.Event()
            first = asyncio.create_task(h.complete(h.call()))
            await asyncio.sleep(0.1)
            server.stop()
            h.engine.gate.set()
            body = await asyncio.wait_for(first, 10)
            assert body["choices"][0]["finish_reason"] == "stop" and stage.status()["available"] is False
        finally:
            await stage.aclose()


def stages_of(settings: Settings, engine: Any) -> list[Any]:
    return build_stages(settings, build_engines(settings, engine))


def test_build_stages_places_idempotency_and_picks_its_store() -> None:
    engine = CountingEngine()
    names = [s.name for s in stages_of(Settings(), engine)]
    assert "idempotency" in names and names.index("idempotency") > names.index("images")
    limited = [s.name for s in stages_of(Settings(tpm=100), engine)]
    assert limited.index("limits") < limited.index("images") < limited.index("idempotency")
    [stage] = [s for s in stages_of(Settings(redis="redis://127.0.0.1:1/0"), engine) if s.name == "idempotency"]
    assert isinstance(stage, IdempotencyStage) and isinstance(stage.store, RedisStore)
    assert stage.store.prefix == "unimodel:idem:"
    assert "idempotency" not in [s.name for s in stages_of(Settings(idempotency=False), engine)]
