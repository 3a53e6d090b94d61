"""Fixtures for the idempotency tests: a counting engine, a service with the stage, and both stores."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Optional

import pytest

from tests.support.fake_engine import InMemoryEngine
from tests.support.flush_rules import sse_frames
from unimodel.engines.base import GenerationRequest
from unimodel.errors import UpstreamError
from unimodel.gateway.auth import ApiKeyAuth
from unimodel.gateway.idempotency import IdempotencyStage, IdempotencyStore, MemoryStore, RedisStore
from unimodel.protocol.events import FLUSH, ContentDelta, Event, Finish, ReasoningDelta, Usage
from unimodel.service.chat import ChatService
from unimodel.service.context import RequestContext
from unimodel.service.parse import ParseStage
from unimodel.service.pipeline import Call, Pipeline
from unimodel.service.validate import ValidateStage

BODY: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class CountingEngine(InMemoryEngine):
    """Counts its calls; answers reasoning, ``n`` content deltas, usage and finish. ``gate`` (when set) holds
    every call before its first event; ``fail_next`` makes the next call fail after one delta."""

    kind = "counting"

    def __init__(self, n: int = 3) -> None:
        self.n = n
        self.calls = 0
        self.gate: Optional[asyncio.Event] = None
        self.fail_next = False

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self.calls += 1
        fail, self.fail_next = self.fail_next, False
        if self.gate is not None:
            await self.gate.wait()
        yield ReasoningDelta(f"thinking {self.calls} ")
        for i in range(self.n):
            if fail and i == 1:
                raise UpstreamError("the upstream connection failed")
            yield ContentDelta(f"c{self.calls}.{i} ")
            yield FLUSH  # about to wait: Flush is every engine's contract
            await asyncio.sleep(0)
        yield Usage(5, self.n + 1, 1)
        yield Finish("stop")


StoreFactory = Callable[..., IdempotencyStore]


@pytest.fixture(params=["memory", "redis"])
def store_factory(request: pytest.FixtureRequest) -> StoreFactory:
    """Makes a fresh store (memory, or a real Redis with a key prefix of its own) with the given TTLs."""
    if request.param == "memory":
        def memory(ttl_s: float = 60.0, claim_ttl_s: float = 60.0, **kw: Any) -> IdempotencyStore:
            return MemoryStore(ttl_s, claim_ttl_s, **kw)
        return memory
    server = request.getfixturevalue("redis_server")
    prefix = f"t{uuid.uuid4().hex[:12]}:"

    def redis(ttl_s: float = 60.0, claim_ttl_s: float = 60.0, **kw: Any) -> IdempotencyStore:
        return RedisStore(server.url, prefix, ttl_s, claim_ttl_s, **kw)
    return redis


class Harness:
    def __init__(self, stage: IdempotencyStage, engine: CountingEngine, keys: tuple[str, ...] = ()) -> None:
        self.stage, self.engine = stage, engine
        pipeline = Pipeline([ApiKeyAuth(list(keys)), ParseStage(), ValidateStage(engine.models), stage])
        self.service = ChatService(engine, pipeline)
        self._n = 0

    def call(self, body: Optional[dict[str, Any]] = None, key: Optional[str] = "k-1",
             headers: Optional[dict[str, str]] = None) -> Call:
        raw = json.dumps(body if body is not None else BODY).encode()
        self._n += 1

        async def read() -> bytes:
            return raw

        hdrs = dict(headers or {})
        if key is not None:
            hdrs["idempotency-key"] = key
        return Call(RequestContext(f"req-{self._n}"), hdrs, read)

    async def complete(self, call: Call) -> dict[str, Any]:
        return await self.service.complete(await self.service.prepare(call))

    async def stream(self, call: Call) -> list[bytes]:
        """The SSE frames (``data: ...\n\n`` each), however the service grouped them into writes."""
        return sse_frames([w async for w in self.service.stream(await self.service.prepare(call))])


@pytest.fixture()
async def make_harness(store_factory: StoreFactory) -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    stages: list[IdempotencyStage] = []

    async def make(engine: Optional[CountingEngine] = None, keys: tuple[str, ...] = (),
                   store: Optional[dict[str, Any]] = None, **stage_kw: Any) -> Harness:
        stage = IdempotencyStage(store_factory(**(store or {})), **stage_kw)
        await stage.start()
        stages.append(stage)
        return Harness(stage, engine or CountingEngine(), keys)

    yield make
    for stage in stages:
        await stage.aclose()
