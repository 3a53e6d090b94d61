"""The Redis store on a real redis-server: exact across two "replicas" (two stages, two clients) under
concurrent load, and Redis going away mid-test: the chosen failure mode, never a 500, a bounded wait, and
recovery when it is back."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.redis_server import RedisServer
from tests.unit.gateway.limits_support import UsageEngine, ask, service, start
from unimodel.gateway.limits import LimitDefaults, LimitsStage
from unimodel.gateway.limits.redis_store import RedisStore

pytestmark = pytest.mark.timeout(90)


def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:10]}:"


async def replicas(url: str, n: int = 2, **defaults: Any) -> list[LimitsStage]:
    """``n`` limits stages, each with its own Redis client, sharing one prefix: replicas of one gateway."""
    shared = prefix()
    stages = [LimitsStage(LimitDefaults(**defaults), RedisStore(url, shared, timeout_s=2.0)) for _ in range(n)]
    for stage in stages:
        await stage.start()
    return stages


async def test_two_replicas_hold_rpm_4_exactly_under_concurrent_load(redis_server: RedisServer) -> None:
    stages = await replicas(redis_server.url, rpm=4)
    try:
        services = [service(UsageEngine(), s) for s in stages]
        answers = await asyncio.gather(*(ask(services[i % 2]) for i in range(40)))
        assert sorted(a.status for a in answers).count(200) == 4
        assert {a.status for a in answers} == {200, 429}
        served_by = {i % 2 for i, a in enumerate(answers) if a.status == 200}
        assert len(answers) == 40 and served_by  # (which replica served them does not matter)
        assert sorted(a.remaining_requests for a in answers if a.status == 200) == [0, 1, 2, 3]
    finally:
        for s in stages:
            await s.aclose()


async def test_two_replicas_hold_the_in_flight_cap_exactly(redis_server: RedisServer) -> None:
    stages = await replicas(redis_server.url, tpm=1000, max_concurrent=3)
    try:
        engines = [UsageEngine(n=2), UsageEngine(n=2)]
        for engine in engines:
            engine.gate = asyncio.Event()
        services = [service(engines[i], s) for i, s in enumerate(stages)]

        async def try_start(i: int) -> Any:
            try:
                return await start(services[i % 2], max_tokens=100, stream=True), services[i % 2]
            except Exception as exc:
                return exc

        held = await asyncio.gather(*(try_start(i) for i in range(12)))
        admitted = [h for h in held if isinstance(h, tuple)]
        assert len(admitted) == 3  # the in-flight cap across both
        for engine in engines:
            engine.gate.set()  # type: ignore[union-attr]
        for (_, prepared), svc in admitted:
            [_ async for _ in svc.stream(prepared)]
        # each used 8 tokens of its 106: 1000 - 3 × 8 left, seen from either replica; the slots are free again
        answer = await ask(services[1], max_tokens=10)
        assert answer.status == 200 and answer.remaining_tokens == 1000 - 24 - (6 + 10)  # 6: the prompt's estimate
    finally:
        for s in stages:
            await s.aclose()


async def test_two_replicas_hold_tpm_exactly_under_concurrent_load(redis_server: RedisServer) -> None:
    stages = await replicas(redis_server.url, tpm=1000)
    try:
        services = [service(UsageEngine(prompt=40, completion=60), s) for s in stages]  # uses all it reserves
        # 94 + the prompt's estimate (6): 100 reserved each
        answers = await asyncio.gather(*(ask(services[i % 2], max_tokens=94) for i in range(30)))
        assert [a.status for a in answers].count(200) == 10
    finally:
        for s in stages:
            await s.aclose()


@pytest.fixture()
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, to stop and start again on the same port."""
    with RedisServer() as server:
        yield server


async def test_redis_down_fails_open_once_logged_counted_and_recovers(own_redis: RedisServer,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    stage = LimitsStage(LimitDefaults(rpm=2, tpm=100_000),
                        RedisStore(own_redis.url, prefix(), timeout_s=0.5, backoff_s=0.2))
    await stage.start()
    try:
        svc = service(UsageEngine(), stage)
        held = await start(svc)  # admitted while Redis is up, finished while it is down
        assert (await ask(svc)).status == 200
        own_redis.stop()
        caplog.set_level(logging.WARNING, logger="unimodel.limits")
        answers = [await ask(svc) for _ in range(5)]
        assert [a.status for a in answers] == [200] * 5  # open: served, unchecked
        assert not any(h.startswith("x-ratelimit") for h in answers[0].headers)
        assert answers[0].call is not None and answers[0].call.ctx.limits == "unchecked"
        await svc.complete(held[1])  # its settlement cannot reach Redis: counted, not an error
        status = stage.status()
        assert status["redis"] == "down" and status["outages"] == 1 and status["admitted_unchecked"] == 5
        assert status["release_failed"] == 1
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        down_lines = [r for r in caplog.records if "does not answer" in r.getMessage()]
        assert len(down_lines) == 1  # once per outage
        own_redis.start()
        await asyncio.sleep(0.3)  # past the backoff: the next call reconnects
        back = [await ask(svc) for _ in range(3)]
        assert [a.status for a in back] == [200, 200, 429]  # a fresh Redis: its buckets start full
        assert stage.status()["redis"] == "up"
        assert any("is back" in r.getMessage() for r in caplog.records)
    finally:
        await stage.aclose()


async def test_redis_down_fails_closed_with_503_and_retry_after(own_redis: RedisServer) -> None:
    stage = LimitsStage(LimitDefaults(rpm=5), RedisStore(own_redis.url, prefix(), timeout_s=0.5, backoff_s=0.2),
                        on_store_failure="closed")
    await stage.start()
    try:
        svc = service(UsageEngine(), stage)
        assert (await ask(svc)).status == 200
        own_redis.stop()
        refused = await ask(svc)
        assert refused.status == 503 and refused.error is not None
        assert refused.error.code == "limits_unavailable" and refused.headers["Retry-After"] == "1"
        assert stage.status()["refused_unavailable"] == 1
        own_redis.start()
        await asyncio.sleep(0.3)
        assert (await ask(svc)).status == 200
    finally:
        await stage.aclose()


async def test_a_redis_that_never_answers_costs_one_timeout_then_nothing() -> None:
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        stage = LimitsStage(LimitDefaults(rpm=1), RedisStore(url, prefix(), timeout_s=0.2, backoff_s=30))
        await stage.start()
        try:
            svc = service(UsageEngine(), stage)
            began = time.perf_counter()
            assert (await ask(svc)).status == 200
            first = time.perf_counter() - began
            began = time.perf_counter()
            assert [(await ask(svc)).status for _ in range(5)] == [200] * 5
            rest = time.perf_counter() - began
            assert first < 1.5 and rest < first  # bounded by the timeout; then no wait at all during the backoff
        finally:
            await stage.aclose()
