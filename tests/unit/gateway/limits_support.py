"""Shared pieces of the limits tests: an engine with scripted usage, the pipeline around the limits stage, and
one request sent through it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Optional

from tests.support.fake_engine import InMemoryEngine
from unimodel.engines.base import Engine, GenerationRequest
from unimodel.errors import UnimodelError, UpstreamError
from unimodel.gateway.limits import LimitsStage
from unimodel.protocol.events import FLUSH, ContentDelta, Event, Finish, Usage
from unimodel.service.chat import ChatService, PreparedChat
from unimodel.service.context import Caller, RequestContext
from unimodel.service.parse import ParseStage
from unimodel.service.pipeline import Call, Pipeline, Stage
from unimodel.service.validate import ValidateStage


class UsageEngine(InMemoryEngine):
    """``n`` deltas of ``delta`` text, then ``Usage(prompt, completion)``; may fail after ``fail_after`` deltas,
    or wait (``gate``) before each delta."""

    kind = "scripted"

    def __init__(self, prompt: int = 5, completion: int = 3, n: int = 3, delta: str = "abcd") -> None:
        self.prompt, self.completion, self.n, self.delta = prompt, completion, n, delta
        self.fail_after: Optional[int] = None
        self.gate: Optional[asyncio.Event] = None
        self.calls = 0

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self.calls += 1
        for i in range(self.n):
            if self.fail_after is not None and i == self.fail_after:
                raise UpstreamError("the upstream connection failed")
            if self.gate is not None and i > 0:
                yield FLUSH  # about to wait: Flush is every engine's contract
                await self.gate.wait()
            yield ContentDelta(self.delta)
        yield Usage(self.prompt, self.completion)
        yield Finish("stop")


class AsKey(Stage):
    """Stands in for the auth stage: the call comes from ``caller``."""

    name = "as-key"

    def __init__(self, caller: Caller) -> None:
        self.caller = caller

    async def enter(self, call: Call) -> None:
        call.ctx.key_name = self.caller.name
        call.ctx.caller = self.caller


class Refuse(Stage):
    """A later stage that refuses every call (as idempotency or resilience may)."""

    name = "refuse"

    async def enter(self, call: Call) -> None:
        raise UnimodelError("refused later", status_code=409, code="conflict")


def service(engine: Engine, limits: LimitsStage, *after: Stage, caller: Caller = Caller(name="k1")) -> ChatService:
    """The pipeline as composed: the key's requests before the body is parsed, the rest after validation."""
    return ChatService(engine, Pipeline([AsKey(caller), limits.requests, ParseStage(), ValidateStage(engine.models),
                                         limits, *after]))


def call_for(**fields: Any) -> Call:
    body = {"model": "m", "messages": [{"role": "user", "content": "hello there"}], **fields}
    raw = json.dumps(body).encode()

    async def read() -> bytes:
        return raw

    return Call(RequestContext("r"), {}, read)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    error: Optional[UnimodelError] = None
    call: Optional[Call] = None
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def remaining_requests(self) -> int:
        return int(self.headers["x-ratelimit-remaining-requests"])

    @property
    def remaining_tokens(self) -> int:
        return int(self.headers["x-ratelimit-remaining-tokens"])


async def ask(svc: ChatService, **fields: Any) -> Answer:
    """One non-streamed request, answered or refused (refusal headers merged as the route merges them)."""
    call = call_for(**fields)
    try:
        prepared = await svc.prepare(call)
        body = await svc.complete(prepared)
    except UnimodelError as exc:
        return Answer(exc.status_code, {**call.response_headers, **exc.headers()}, exc, call)
    return Answer(200, dict(call.response_headers), None, call, body)


async def start(svc: ChatService, **fields: Any) -> tuple[Call, PreparedChat]:
    """A request admitted and started, not yet finished (it holds what it took)."""
    call = call_for(**fields)
    return call, await svc.prepare(call)
