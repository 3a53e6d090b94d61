"""The request pipeline: stage order, refusals, release in ``finally`` under cancellation, and the observer
seeing every request exactly once (answered, refused, failed mid-stream, abandoned)."""

from __future__ import annotations

import asyncio
import json
from contextlib import aclosing
from collections.abc import AsyncIterator
from typing import Any, Optional

import pytest

from tests.support.fake_engine import InMemoryEngine
from tests.support.flush_rules import sse_frames
from unimodel.engines.base import Engine, GenerationRequest
from unimodel.errors import AuthenticationError, RateLimitError, UpstreamError
from unimodel.gateway.auth import ApiKeyAuth
from unimodel.gateway.keys import plain_key_name
from unimodel.protocol.events import FLUSH, ContentDelta, Event, Finish, Usage
from unimodel.service.chat import ChatService
from unimodel.service.context import RequestContext
from unimodel.service.observer import Observers
from unimodel.service.parse import ParseStage
from unimodel.service.pipeline import Call, Generate, Pipeline, Stage
from unimodel.service.validate import ValidateStage


class ScriptedEngine(InMemoryEngine):
    """Yields ``n`` content deltas, then usage and finish; optionally fails after ``fail_after`` deltas, or
    waits forever before its first event (``hang``)."""

    kind = "scripted"
    max_model_len = 1000

    def __init__(self) -> None:
        self.fail_after: Optional[int] = None
        self.hang = False
        self.n = 3
        self.closed = 0
        self.started = 0

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self.started += 1
        try:
            if self.hang:
                await asyncio.sleep(3600)
            for i in range(self.n):
                if self.fail_after is not None and i == self.fail_after:
                    raise UpstreamError("the upstream connection failed")
                yield ContentDelta(f"t{i} ")
                yield FLUSH  # about to wait: Flush is every engine's contract
                await asyncio.sleep(0)
            yield Usage(5, self.n)
            yield Finish("stop")
        finally:
            self.closed += 1


class Recorder(Stage):
    def __init__(self, name: str, log: list[str], refuse: bool = False) -> None:
        self.name, self.log, self.refuse = name, log, refuse

    async def enter(self, call: Call) -> None:
        self.log.append(f"enter {self.name}")
        if self.refuse:
            raise RateLimitError("slow down", retry_after=3)

    def wrap(self, call: Call, generate: Generate) -> Generate:
        log, name = self.log, self.name

        async def wrapped(request: GenerationRequest) -> AsyncIterator[Event]:
            log.append(f"wrap {name}")
            async with aclosing(generate(request)) as events:  # type: ignore[type-var]
                async for event in events:
                    yield event

        return wrapped

    async def exit(self, call: Call, error: Optional[BaseException]) -> None:
        self.log.append(f"exit {self.name} {type(error).__name__ if error else 'ok'}")


class Seen:
    def __init__(self) -> None:
        self.contexts: list[RequestContext] = []

    def request_finished(self, ctx: RequestContext) -> None:
        self.contexts.append(ctx)


def make_service(engine: Engine, *stages: Stage, keys: tuple[str, ...] = ()) -> tuple[ChatService, Seen]:
    seen = Seen()
    pipeline = Pipeline([ApiKeyAuth(list(keys)), ParseStage(), ValidateStage(engine.models), *stages])
    return ChatService(engine, pipeline, Observers([seen])), seen


def make_call(body: dict[str, Any], headers: Optional[dict[str, str]] = None, rid: str = "req-1") -> Call:
    raw = json.dumps(body).encode()

    async def read() -> bytes:
        return raw

    return Call(RequestContext(rid), headers or {}, read)


BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def test_stages_enter_in_order_wrap_outside_in_and_exit_in_reverse() -> None:
    log: list[str] = []
    service, seen = make_service(ScriptedEngine(), Recorder("a", log), Recorder("b", log))
    body = await service.complete(await service.prepare(make_call(BODY)))
    assert body["choices"][0]["message"]["content"] == "t0 t1 t2 "
    assert body["id"] == "chatcmpl-req-1"
    assert log == ["enter a", "enter b", "wrap a", "wrap b", "exit b ok", "exit a ok"]
    [ctx] = seen.contexts
    assert (ctx.status, ctx.error_type, ctx.finish_reason, ctx.model) == (200, None, "stop", "m")
    assert ctx.usage == Usage(5, 3) and ctx.key_name == "anonymous"
    assert ctx.ttft_ms is not None and ctx.latency_ms is not None and ctx.latency_ms >= ctx.ttft_ms


async def test_a_refusal_exits_only_the_stages_entered_before_it_and_is_observed() -> None:
    log: list[str] = []
    engine = ScriptedEngine()
    service, seen = make_service(engine, Recorder("a", log), Recorder("b", log, refuse=True),
                                 Recorder("c", log))
    with pytest.raises(RateLimitError):
        await service.prepare(make_call(BODY))
    assert log == ["enter a", "enter b", "exit a RateLimitError"]
    assert engine.started == 0
    [ctx] = seen.contexts
    assert (ctx.status, ctx.error_type) == (429, "rate_limit_exceeded")


async def test_auth_is_the_first_stage_and_names_the_key_never_the_secret() -> None:
    log: list[str] = []
    service, seen = make_service(ScriptedEngine(), Recorder("a", log), keys=("sk-one", "sk-two"))
    with pytest.raises(AuthenticationError):
        await service.prepare(make_call({"not": "even parsed"}, {"authorization": "Bearer wrong"}))
    assert log == [] and seen.contexts[0].status == 401
    prepared = await service.prepare(make_call(BODY, {"authorization": "Bearer sk-two"}, rid="r2"))
    await service.complete(prepared)
    assert seen.contexts[1].key_name == plain_key_name("sk-two")


async def test_stream_failing_midway_ends_with_an_error_frame_and_is_observed_once() -> None:
    log: list[str] = []
    engine = ScriptedEngine()
    engine.fail_after = 2
    service, seen = make_service(engine, Recorder("a", log))
    prepared = await service.prepare(make_call({**BODY, "stream": True}))
    frames = sse_frames([f async for f in service.stream(prepared)])
    assert frames[-1] == b"data: [DONE]\n\n"
    error = json.loads(frames[-2][len(b"data: "):])
    assert error["error"]["code"] == "bad_gateway"
    assert log[-1] == "exit a UpstreamError" and engine.closed == 1
    [ctx] = seen.contexts
    assert (ctx.status, ctx.error_type, ctx.stream) == (502, "bad_gateway", True)


async def test_a_client_leaving_a_stream_releases_stages_closes_the_engine_and_is_observed() -> None:
    log: list[str] = []
    engine = ScriptedEngine()
    engine.n = 50
    service, seen = make_service(engine, Recorder("a", log))
    prepared = await service.prepare(make_call({**BODY, "stream": True}))
    stream = service.stream(prepared)
    await anext(stream)
    await anext(stream)
    await stream.aclose()  # what Starlette does when the client goes
    assert engine.closed == 1 and log[-1].startswith("exit a ")
    [ctx] = seen.contexts
    assert (ctx.status, ctx.error_type) == (499, "client_closed")


async def test_cancelling_a_request_waiting_for_its_first_event_frees_everything() -> None:
    log: list[str] = []
    engine = ScriptedEngine()
    engine.hang = True
    service, seen = make_service(engine, Recorder("a", log))
    task = asyncio.ensure_future(service.prepare(make_call(BODY)))
    for _ in range(20):
        await asyncio.sleep(0)
    assert engine.started == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert engine.closed == 1 and log[-1] == "exit a CancelledError"
    [ctx] = seen.contexts
    assert ctx.status == 499


async def test_cancelled_non_streamed_completion_is_observed_once() -> None:
    engine = ScriptedEngine()
    engine.n = 10_000
    service, seen = make_service(engine)
    prepared = await service.prepare(make_call(BODY))
    task = asyncio.ensure_future(service.complete(prepared))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert len(seen.contexts) == 1 and seen.contexts[0].status == 499 and engine.closed == 1


async def test_a_failing_observer_or_exit_does_not_disturb_the_response() -> None:
    class Broken(Stage):
        name = "broken"

        async def exit(self, call: Call, error: Optional[BaseException]) -> None:
            raise RuntimeError("boom")

    class BadObserver:
        def request_finished(self, ctx: RequestContext) -> None:
            raise RuntimeError("boom")

    engine = ScriptedEngine()
    seen = Seen()
    service = ChatService(engine, Pipeline([ParseStage(), ValidateStage(engine.models), Broken()]),
                          Observers([BadObserver(), seen]))
    body = await service.complete(await service.prepare(make_call(BODY)))
    assert body["choices"][0]["finish_reason"] == "stop" and len(seen.contexts) == 1


def test_stage_names_must_be_distinct() -> None:
    with pytest.raises(ValueError):
        Pipeline([Recorder("a", []), Recorder("a", [])])


async def test_a_prepared_stream_never_written_still_ends_once() -> None:
    """The client left between prepare and the first byte (the server's first write fails): the stream is
    never iterated, yet the stages are released, the engine closed and the request observed (once)."""
    import json
    from types import SimpleNamespace

    from unimodel.server.routes.chat import ApiEndpoint

    log: list[str] = []
    engine = ScriptedEngine()
    service, seen = make_service(engine, Recorder("a", log))
    messages = [{"type": "http.request", "body": json.dumps({**BODY, "stream": True}).encode(), "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)  # the client sends nothing more; the server finds out when it writes
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        raise OSError("the client is gone")

    scope = {"type": "http", "app": SimpleNamespace(state=SimpleNamespace(chat=service)),
             "headers": [(b"content-type", b"application/json")]}
    with pytest.raises(OSError):
        await asyncio.wait_for(ApiEndpoint()(scope, receive, send), 10)
    assert engine.closed == 1 and log[-1].startswith("exit a ")
    assert [c.status for c in seen.contexts] == [499]
    assert len(seen.contexts) == 1 and service.in_flight == 0


async def test_a_write_that_fails_mid_stream_closes_the_stream_at_once_and_ends_it_once() -> None:
    """A server that raises on a write to a client that left (ASGI 2.4): the engine is closed, the stages
    released and the request observed once, as 499, before the error reaches the server."""
    import json
    from types import SimpleNamespace

    from unimodel.server.routes.chat import ApiEndpoint

    log: list[str] = []
    engine = ScriptedEngine()
    engine.n = 50
    service, seen = make_service(engine, Recorder("a", log))
    messages = [{"type": "http.request", "body": json.dumps({**BODY, "stream": True}).encode(), "more_body": False}]
    writes = 0

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        nonlocal writes
        writes += message["type"] == "http.response.body"
        if writes == 2:
            raise OSError("the client is gone")

    scope = {"type": "http", "app": SimpleNamespace(state=SimpleNamespace(chat=service)),
             "headers": [(b"content-type", b"application/json")]}
    with pytest.raises(OSError):
        await asyncio.wait_for(ApiEndpoint()(scope, receive, send), 10)
    assert engine.closed == 1 and log[-1].startswith("exit a ")
    assert [c.status for c in seen.contexts] == [499] and service.in_flight == 0
