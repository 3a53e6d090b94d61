"""A request ends exactly once: every entered stage's ``exit`` runs once and to its end, and every observer is
told once, whatever is cancelled (twice included, and while an ``exit`` awaits) and whatever another stage's
``exit`` raises (``BaseException`` included)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Optional

import pytest

from tests.support.fake_engine import InMemoryEngine
from unimodel.engines.base import GenerationRequest
from unimodel.protocol.events import ContentDelta, Event, Finish, Flush, Usage
from unimodel.service.chat import ChatService
from unimodel.service.context import RequestContext
from unimodel.service.observer import Observers
from unimodel.service.parse import ParseStage
from unimodel.service.pipeline import Call, Pipeline, Stage
from unimodel.service.validate import ValidateStage


class Engine(InMemoryEngine):
    """Two deltas, then (``hang``) waits until cancelled, or finishes."""

    kind = "exactly-once"

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.closed = 0

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        try:
            yield ContentDelta("a")
            yield Flush()
            yield ContentDelta("b")
            yield Flush()
            if self.hang:
                await asyncio.Event().wait()
            yield Usage(3, 2)
            yield Finish("stop")
        finally:
            self.closed += 1


class Waits(Stage):
    """An exit that awaits an event (a release over the network, say)."""

    name = "waits"

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.waiting = asyncio.Event()
        self.started = self.finished = 0

    async def exit(self, call: Call, error: Optional[BaseException]) -> None:
        self.started += 1
        self.waiting.set()
        await self.release.wait()
        self.finished += 1


class Raises(Stage):
    name = "raises"

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.exits = 0

    async def exit(self, call: Call, error: Optional[BaseException]) -> None:
        self.exits += 1
        raise self.exc


class Counts(Stage):
    def __init__(self, name: str) -> None:
        self.name = name
        self.exits = 0

    async def exit(self, call: Call, error: Optional[BaseException]) -> None:
        self.exits += 1


class Seen:
    def __init__(self) -> None:
        self.contexts: list[RequestContext] = []

    def request_finished(self, ctx: RequestContext) -> None:
        self.contexts.append(ctx)


def make(engine: Engine, exc: BaseException) -> tuple[ChatService, Counts, Waits, Raises, Counts, Seen]:
    # exits run in reverse: inner, raises, waits, outer
    outer, waits, raises, inner, seen = Counts("outer"), Waits(), Raises(exc), Counts("inner"), Seen()
    pipeline = Pipeline([ParseStage(), ValidateStage(engine.models), outer, waits, raises, inner])
    return ChatService(engine, pipeline, Observers([seen])), outer, waits, raises, inner, seen


def call(stream: bool) -> Call:
    raw = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}).encode()

    async def read() -> bytes:
        return raw

    return Call(RequestContext("r1"), {}, read)


async def consume(service: ChatService, stream: bool) -> Any:
    prepared = await service.prepare(call(stream))
    try:
        if stream:
            return [w async for w in service.stream(prepared)]
        return await service.complete(prepared)
    finally:
        await service.abandon(prepared)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


class Halt(BaseException):
    """A ``BaseException`` of a stage's own (``KeyboardInterrupt`` would stop the event loop itself)."""


RAISED = [RuntimeError("boom"), asyncio.CancelledError(), Halt()]


@pytest.mark.parametrize("exc", RAISED, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "complete"])
async def test_the_client_leaving_then_the_server_shutting_down_ends_the_request_once(
        stream: bool, exc: BaseException) -> None:
    engine = Engine(hang=True)
    service, outer, waits, raises, inner, seen = make(engine, exc)
    task = asyncio.ensure_future(consume(service, stream))
    await settle()
    task.cancel()  # the client leaves while the engine generates
    await asyncio.wait_for(waits.waiting.wait(), 5)
    task.cancel()  # the server shuts down while an exit awaits
    await settle()
    task.cancel()
    await settle()
    assert not task.done()  # the end runs to its end: the cancellations wait for it
    assert (waits.started, waits.finished) == (1, 0) and outer.exits == 0
    waits.release.set()
    with pytest.raises((asyncio.CancelledError, Halt)):
        await asyncio.wait_for(task, 5)
    assert (inner.exits, raises.exits, waits.started, waits.finished, outer.exits) == (1, 1, 1, 1, 1)
    assert engine.closed == 1 and service.in_flight == 0
    [ctx] = seen.contexts
    assert (ctx.status, ctx.error_type) == (499, "client_closed")


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "complete"])
async def test_a_cancellation_while_an_exit_awaits_after_a_full_answer_waits_for_the_end(stream: bool) -> None:
    engine = Engine()
    service, outer, waits, raises, inner, seen = make(engine, RuntimeError("boom"))
    task = asyncio.ensure_future(consume(service, stream))
    await asyncio.wait_for(waits.waiting.wait(), 5)  # answered; the end is under way
    task.cancel()
    await settle()
    task.cancel()
    await settle()
    assert not task.done() and waits.finished == 0
    waits.release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert (inner.exits, raises.exits, waits.finished, outer.exits, len(seen.contexts)) == (1, 1, 1, 1, 1)
    [ctx] = seen.contexts
    assert (ctx.status, ctx.finish_reason) == (200, "stop")  # the answer was whole before the cancellations


async def test_a_stream_closed_then_abandoned_ends_once() -> None:
    engine = Engine(hang=True)
    service, outer, waits, raises, inner, seen = make(engine, RuntimeError("boom"))
    waits.release.set()
    prepared = await service.prepare(call(True))
    stream = service.stream(prepared)
    await anext(stream)
    await stream.aclose()  # the server closes the stream: the client left
    await service.abandon(prepared)
    await service.abandon(prepared)
    assert (inner.exits, raises.exits, waits.started, outer.exits, engine.closed) == (1, 1, 1, 1, 1)
    [ctx] = seen.contexts
    assert ctx.status == 499 and service.in_flight == 0


async def test_abandon_while_the_end_is_under_way_does_not_repeat_it() -> None:
    engine = Engine()
    service, outer, waits, raises, inner, seen = make(engine, RuntimeError("boom"))
    prepared = await service.prepare(call(False))
    completing = asyncio.ensure_future(service.complete(prepared))
    await asyncio.wait_for(waits.waiting.wait(), 5)
    await service.abandon(prepared)  # returns at once: the end is begun, by the completion
    assert waits.finished == 0
    waits.release.set()
    body = await asyncio.wait_for(completing, 5)
    assert body["choices"][0]["message"]["content"] == "ab"
    assert (waits.started, waits.finished, outer.exits, len(seen.contexts)) == (1, 1, 1, 1)
    assert seen.contexts[0].status == 200


async def test_a_refusal_while_earlier_exits_await_is_released_once_under_cancellation() -> None:
    """A stage refuses in ``enter``: the stages entered before it exit (one awaits), shielded the same way."""

    class Refuses(Stage):
        name = "refuses"

        async def enter(self, call: Call) -> None:
            from unimodel.errors import RateLimitError

            raise RateLimitError("slow down")

    engine = Engine()
    waits, seen = Waits(), Seen()
    service = ChatService(engine, Pipeline([ParseStage(), ValidateStage(engine.models), waits, Refuses()]),
                          Observers([seen]))
    task = asyncio.ensure_future(service.prepare(call(False)))
    await asyncio.wait_for(waits.waiting.wait(), 5)
    task.cancel()
    await settle()
    task.cancel()
    await settle()
    assert not task.done()
    waits.release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert (waits.started, waits.finished, len(seen.contexts)) == (1, 1, 1)
