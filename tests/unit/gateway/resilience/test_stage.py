"""The resilience stage around fake engines: retries before the first event only, verdicts, breakers, fallback,
canary, per-route timeouts and upstreams, and a client that leaves. Waits are recorded, not slept."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Optional

import aiohttp
import pytest
from aiohttp import web

from tests.support.loopback_http import http_server
from unimodel.engines.base import Engine, GenerationRequest
from unimodel.engines.upstream import UpstreamEngine
from unimodel.errors import (
    CircuitOpenError,
    InvalidRequestError,
    RateLimitError,
    UpstreamConnectionError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from unimodel.gateway.resilience import (
    UPSTREAM_HEADER,
    Backoff,
    CircuitBreaker,
    ResiliencePolicy,
    ResilienceStage,
    Upstream,
    UpstreamPool,
)
from unimodel.protocol.events import FLUSH, ContentDelta, Event, Finish, Usage
from unimodel.protocol.openai import Message, ModelCard
from unimodel.service.context import RequestContext, RouteChoice
from unimodel.service.pipeline import Call


class FakeEngine(Engine):
    """Fails its first calls with the errors in ``failures`` (one per call), then answers ``text``; ``hang``
    waits forever before the first event, ``break_after`` fails mid-stream after that many events."""

    kind = "fake"

    def __init__(self, text: str = "ok", failures: Optional[list[BaseException]] = None) -> None:
        self.text = text
        self.failures = list(failures or [])
        self.calls = 0
        self.closed = 0
        self.hang = False
        self.break_after: Optional[int] = None
        self.frame_delay_s = 0.0
        self.started = False
        self.kwargs: list[dict[str, Any]] = []

    async def start(self) -> None:
        self.started = True

    async def aclose(self) -> None:
        self.started = False

    def is_ready(self) -> bool:
        return True

    def models(self) -> list[ModelCard]:
        return [ModelCard(id="m")]

    async def generate(self, request: GenerationRequest, **kwargs: Any) -> AsyncIterator[Event]:
        self.calls += 1
        self.kwargs.append(kwargs)
        try:
            if self.failures:
                raise self.failures.pop(0)
            if self.hang:
                await asyncio.sleep(3600)
            for i, word in enumerate(self.text.split()):
                if self.break_after is not None and i == self.break_after:
                    raise UpstreamConnectionError("the upstream went away")
                yield ContentDelta(word + " ")
                if self.frame_delay_s:
                    yield FLUSH  # about to wait: Flush is every engine's contract
                    await asyncio.sleep(self.frame_delay_s)
            yield Usage(3, 2)
            yield Finish("stop")
        finally:
            self.closed += 1


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    stage: ResilienceStage
    primary: FakeEngine
    clock: Clock
    waits: list[float] = field(default_factory=list)


def harness(*, retries: int = 2, fallbacks: int = 0, canary: bool = False, canary_weight: float = 0.0,
            failures: int = 5, first_token: Optional[float] = None, total: Optional[float] = None,
            max_wait: float = 5.0, named: tuple[str, ...] = ()) -> Harness:
    clock = Clock()

    def breaker(name: str) -> CircuitBreaker:
        return CircuitBreaker(name, failures=failures, window_s=30, cooldown_s=10, clock=clock)

    primary = Upstream("primary", breaker("primary"), retries)
    extra = [Upstream(f"fallback-{i}", breaker(f"fallback-{i}"), retries, FakeEngine(f"from fallback-{i}"))
             for i in range(1, fallbacks + 1)]
    canary_upstream = Upstream("canary", breaker("canary"), 0, FakeEngine("from canary")) if canary else None
    named_upstreams = [Upstream(n, breaker(n), retries, FakeEngine(f"from {n}")) for n in named]
    pool = UpstreamPool(primary, extra, canary_upstream, canary_weight, named_upstreams, rng=random.Random(3))
    waits: list[float] = []

    async def sleep(s: float) -> None:
        waits.append(s)

    stage = ResilienceStage(pool, ResiliencePolicy(retries=retries, backoff_s=0.1, max_wait_s=max_wait,
                                                   first_token_timeout_s=first_token, total_timeout_s=total),
                            backoff=Backoff(0.1, max_wait, random.Random(5)), sleep=sleep)
    return Harness(stage, FakeEngine("from primary"), clock, waits)


def engine_of(h: Harness, name: str) -> FakeEngine:
    engine = h.stage.pool.by_name[name].engine
    assert isinstance(engine, FakeEngine)
    return engine


REQUEST = GenerationRequest(completion_id="r1", served_model="m", messages=[Message(role="user", content="hi")])


def new_call(chosen: Optional[RouteChoice] = None) -> Call:
    async def read() -> bytes:
        return b""

    return Call(RequestContext("r1"), {}, read, engine_request=REQUEST, route=chosen)


async def run(h: Harness, call: Optional[Call] = None) -> tuple[str, Call]:
    call = call or new_call()
    text = ""
    async with aclosing(h.stage.wrap(call, h.primary.generate)(REQUEST)) as events:  # type: ignore[type-var]
        async for event in events:
            if isinstance(event, ContentDelta):
                text += event.text
    return text.strip(), call


@dataclass
class Timeouts:
    connect_s: Optional[float] = None
    first_token_s: Optional[float] = None
    total_s: Optional[float] = None


def route(upstreams: Optional[list[str]] = None, timeouts: Optional[Timeouts] = None) -> RouteChoice:
    t = timeouts or Timeouts()
    return RouteChoice("r", tuple(upstreams) if upstreams else None, t.connect_s, t.first_token_s, t.total_s)


def fails(n: int, status: int = 503) -> list[BaseException]:
    return [UpstreamStatusError(f"failed {status}", upstream_status=status) for _ in range(n)]


# ---- the zero-cost path -------------------------------------------------------------------------------------

def test_nothing_configured_returns_the_engine_call_itself() -> None:
    h = harness(retries=0, failures=0)
    generate = h.primary.generate
    assert h.stage.wrap(new_call(), generate) is generate
    assert h.stage.wrap(new_call(route()), generate) is generate  # a route with no timeouts of its own
    assert h.stage.wrap(new_call(route(timeouts=Timeouts(first_token_s=1))), generate) is not generate
    assert harness(retries=1, failures=0).stage.wrap(new_call(), generate) is not generate
    assert harness(retries=0, failures=5).stage.wrap(new_call(), generate) is not generate


# ---- retries ----------------------------------------------------------------------------------------------

async def test_retryable_failures_are_retried_with_bounded_jittered_waits() -> None:
    h = harness(retries=2)
    h.primary.failures = fails(2)
    text, call = await run(h)
    assert text == "from primary" and h.primary.calls == 3
    assert (call.ctx.retries, call.ctx.upstream) == (2, "primary")
    assert call.response_headers[UPSTREAM_HEADER] == "primary"
    assert len(h.waits) == 2 and 0 <= h.waits[0] <= 0.1 and 0 <= h.waits[1] <= 0.2
    assert h.primary.closed == 3  # every failed try's stream was closed


async def test_retries_run_out_and_the_last_failure_is_raised() -> None:
    h = harness(retries=2)
    h.primary.failures = fails(5)
    with pytest.raises(UpstreamStatusError) as info:
        await run(h)
    assert info.value.upstream_status == 503 and h.primary.calls == 3


async def test_a_client_error_is_never_retried_and_does_not_count_against_the_upstream() -> None:
    h = harness(retries=2, fallbacks=1, failures=1)
    h.primary.failures = [InvalidRequestError("bad request", param="messages")]
    call = new_call()
    with pytest.raises(InvalidRequestError):
        await run(h, call)
    assert h.primary.calls == 1 and engine_of(h, "fallback-1").calls == 0 and h.waits == []
    assert h.stage.pool.primary.breaker.state == "closed"
    assert (call.ctx.retries, call.ctx.upstream) == (0, "primary")


async def test_an_upstream_500_is_not_retried_on_the_same_upstream_but_fails_over() -> None:
    h = harness(retries=2, fallbacks=1)
    h.primary.failures = fails(1, status=500)
    text, call = await run(h)
    assert text == "from fallback-1" and h.primary.calls == 1 and h.waits == []
    assert (call.ctx.retries, call.ctx.upstream) == (1, "fallback-1")


async def test_an_upstream_429_waits_its_retry_after_when_short_enough() -> None:
    h = harness(retries=2, max_wait=5)
    h.primary.failures = [RateLimitError("slow down", retry_after=1.5)]
    text, _ = await run(h)
    assert text == "from primary" and h.waits == [1.5]
    assert h.stage.pool.primary.breaker.snapshot()["failures"] == 0  # a 429 is no failure of the upstream


async def test_an_upstream_429_with_a_long_retry_after_gives_up_with_the_429() -> None:
    h = harness(retries=2, max_wait=5)
    h.primary.failures = [RateLimitError("slow down", retry_after=60)]
    with pytest.raises(RateLimitError) as info:
        await run(h)
    assert info.value.retry_after == 60 and h.primary.calls == 1 and h.waits == []


async def test_nothing_is_retried_once_the_first_event_went_out() -> None:
    h = harness(retries=2, fallbacks=1)
    h.primary.text = "one two three"
    h.primary.break_after = 1
    call = new_call()
    seen: list[Event] = []
    with pytest.raises(UpstreamConnectionError):
        async with aclosing(h.stage.wrap(call, h.primary.generate)(REQUEST)) as events:  # type: ignore[type-var]
            async for event in events:
                seen.append(event)
    assert seen == [ContentDelta("one ")]
    assert h.primary.calls == 1 and engine_of(h, "fallback-1").calls == 0
    assert h.stage.pool.primary.breaker.snapshot()["failures"] == 1  # the broken stream counts


# ---- fallback and breakers ----------------------------------------------------------------------------------

async def test_a_dead_primary_is_answered_by_the_fallback_with_the_same_request() -> None:
    h = harness(retries=1, fallbacks=2)
    h.primary.failures = [UpstreamConnectionError("refused")] * 2
    text, call = await run(h)
    assert text == "from fallback-1"
    assert call.response_headers[UPSTREAM_HEADER] == "fallback-1"
    assert (call.ctx.retries, call.ctx.upstream) == (2, "fallback-1")
    assert engine_of(h, "fallback-2").calls == 0


async def test_the_breaker_opens_then_requests_skip_the_primary_and_a_probe_closes_it() -> None:
    h = harness(retries=0, fallbacks=1, failures=3)
    h.primary.failures = fails(3)
    for _ in range(3):
        assert (await run(h))[0] == "from fallback-1"
    assert h.stage.status()["upstreams"]["primary"]["breaker"] == "open"
    text, _ = await run(h)
    assert text == "from fallback-1" and h.primary.calls == 3  # the primary was not touched
    h.clock.now += 10
    assert h.stage.status()["upstreams"]["primary"]["breaker"] == "half-open"
    text, call = await run(h)  # the probe
    assert text == "from primary" and call.response_headers[UPSTREAM_HEADER] == "primary"
    assert h.stage.status()["upstreams"]["primary"]["breaker"] == "closed"


async def test_every_circuit_open_is_a_fast_503_with_retry_after() -> None:
    h = harness(retries=0, failures=2)
    h.primary.failures = fails(2)
    for _ in range(2):
        with pytest.raises(UpstreamStatusError):
            await run(h)
    h.clock.now += 4
    call = new_call()
    with pytest.raises(CircuitOpenError) as info:
        await run(h, call)
    assert info.value.status_code == 503 and info.value.code == "circuit_open"
    assert info.value.retry_after == pytest.approx(6.0)
    assert h.primary.calls == 2 and call.ctx.upstream is None


async def test_a_probe_whose_client_leaves_frees_the_slot() -> None:
    h = harness(retries=0, failures=1, first_token=None)
    h.primary.failures = fails(1)
    with pytest.raises(UpstreamStatusError):
        await run(h)
    h.clock.now += 10
    h.primary.hang = True
    task = asyncio.create_task(run(h))
    while h.primary.calls < 2:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert h.primary.closed == 2  # the engine's work was cancelled
    breaker = h.stage.pool.primary.breaker
    assert breaker.state == "half-open" and breaker.allow() is not None


# ---- canary and routes --------------------------------------------------------------------------------------

async def test_canary_weight_one_sends_everything_to_the_canary() -> None:
    h = harness(canary=True, canary_weight=1.0)
    for _ in range(5):
        text, call = await run(h)
        assert text == "from canary" and call.response_headers[UPSTREAM_HEADER] == "canary"
    assert h.primary.calls == 0


async def test_a_failing_canary_is_not_retried_and_the_primary_answers() -> None:
    h = harness(retries=2, canary=True, canary_weight=1.0)
    engine_of(h, "canary").failures = fails(1)
    text, call = await run(h)
    assert text == "from primary" and engine_of(h, "canary").calls == 1 and h.waits == []
    assert (call.ctx.retries, call.ctx.upstream) == (1, "primary")


async def test_canary_weight_splits_the_traffic() -> None:
    h = harness(canary=True, canary_weight=0.25)
    chosen = [(await run(h))[1].ctx.upstream for _ in range(400)]
    assert 60 <= chosen.count("canary") <= 140


async def test_a_route_naming_upstreams_gets_exactly_those_in_order() -> None:
    h = harness(retries=0, fallbacks=1, named=("big",))
    text, call = await run(h, new_call(route(upstreams=["big", "fallback-1"])))
    assert text == "from big" and h.primary.calls == 0
    engine_of(h, "big").failures = fails(1)
    text, _ = await run(h, new_call(route(upstreams=["nowhere", "big", "fallback-1"])))  # unknown: skipped
    assert text == "from fallback-1" and h.primary.calls == 0


# ---- timeouts -----------------------------------------------------------------------------------------------

async def test_no_first_token_in_time_is_a_504_and_the_engine_is_cancelled() -> None:
    h = harness(retries=2, first_token=0.05)
    h.primary.hang = True
    with pytest.raises(UpstreamTimeoutError) as info:
        await asyncio.wait_for(run(h), 5)
    assert info.value.status_code == 504 and "first token" in info.value.message
    assert h.primary.calls == 1 and h.primary.closed == 1  # a timeout is not retried on the same upstream
    assert h.stage.pool.primary.breaker.snapshot()["failures"] == 1


async def test_a_first_token_timeout_fails_over() -> None:
    h = harness(retries=2, fallbacks=1, first_token=0.05)
    h.primary.hang = True
    text, _ = await asyncio.wait_for(run(h), 5)
    assert text == "from fallback-1"


async def test_a_route_timeout_overrides_the_server_default() -> None:
    h = harness(retries=0, first_token=60)
    h.primary.hang = True
    with pytest.raises(UpstreamTimeoutError):
        await asyncio.wait_for(run(h, new_call(route(timeouts=Timeouts(first_token_s=0.05)))), 5)


async def test_the_total_timeout_ends_a_stream_midway_without_blaming_the_upstream() -> None:
    h = harness(retries=2, total=0.2)
    h.primary.text = "w " * 100
    h.primary.frame_delay_s = 0.02
    call = new_call()
    seen = 0
    with pytest.raises(UpstreamTimeoutError) as info:
        async with aclosing(h.stage.wrap(call, h.primary.generate)(REQUEST)) as events:  # type: ignore[type-var]
            async for _ in events:
                seen += 1
    assert 1 <= seen < 100 and "finish within the total timeout" in info.value.message
    assert h.primary.calls == 1 and h.primary.closed == 1
    assert h.stage.pool.primary.breaker.snapshot()["failures"] == 0


async def test_waits_never_run_past_the_total_timeout() -> None:
    h = harness(retries=5, total=0.3, max_wait=5)
    h.primary.failures = [RateLimitError("slow", retry_after=1.0)] * 5
    with pytest.raises(RateLimitError):
        await run(h)
    assert h.waits == [] and h.primary.calls == 1


class RecordingConnector(aiohttp.TCPConnector):
    """aiohttp's connector, noting the timeouts each connection was asked for."""

    def __init__(self, seen: list[aiohttp.ClientTimeout]) -> None:
        super().__init__()
        self.seen = seen

    async def connect(self, req: Any, traces: Any, timeout: aiohttp.ClientTimeout) -> Any:
        self.seen.append(timeout)
        return await super().connect(req, traces, timeout)


async def test_the_connect_timeout_reaches_an_upstream_engines_client() -> None:
    seen: list[aiohttp.ClientTimeout] = []
    body = "".join(f"data: {json.dumps(f)}\n\n" for f in [
        {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}]) + "data: [DONE]\n\n"
    answers = [web.Response(text=body, headers={"Content-Type": "text/event-stream"}) for _ in range(2)]

    async def handle(request: web.Request) -> web.StreamResponse:
        return answers.pop(0)

    async with http_server(handle) as url, aiohttp.ClientSession(
            connector=RecordingConnector(seen), timeout=aiohttp.ClientTimeout(connect=7.0, sock_read=9.0)) as session:
        engine = UpstreamEngine(url, served_model_name="m", session=session)
        h = harness(retries=0)
        call = new_call(route(timeouts=Timeouts(connect_s=0.5)))
        async with aclosing(h.stage.wrap(call, engine.generate)(REQUEST)) as events:  # type: ignore[type-var]
            assert [e async for e in events][0] == ContentDelta("hi")
        call = new_call()
        async with aclosing(h.stage.wrap(call, engine.generate)(REQUEST)) as events:  # type: ignore[type-var]
            assert [e async for e in events]
    assert seen[0].connect == 0.5 and seen[0].sock_connect == 0.5  # the wait for a pooled one, and a new one
    assert seen[0].sock_read == 600.0 and seen[0].total is None  # the engine's read timeout; no total
    assert seen[1].connect == 7.0 and seen[1].sock_read == 9.0  # no route override: the session's own


# ---- lifecycle ----------------------------------------------------------------------------------------------

async def test_the_stage_reports_its_upstreams() -> None:
    h = harness(fallbacks=1, canary=True)
    await engine_of(h, "fallback-1").start()
    status = h.stage.status()
    assert status["retries"] == 2
    assert status["upstreams"]["primary"] == {"breaker": "closed", "failures": 0, "opened": 0}
    assert status["upstreams"]["fallback-1"]["ready"] is True
    assert h.stage.upstream_names == ["primary", "fallback-1", "canary"]


def test_an_engine_yielding_nothing_is_fine() -> None:
    class Empty(FakeEngine):
        async def generate(self, request: GenerationRequest, **kwargs: Any) -> AsyncIterator[Event]:
            self.calls += 1
            return
            yield  # pragma: no cover

    async def go() -> list[Event]:
        h = harness()
        empty = Empty()
        async with aclosing(h.stage.wrap(new_call(), empty.generate)(REQUEST)) as events:  # type: ignore[type-var]
            return [e async for e in events]

    assert asyncio.run(go()) == []


@pytest.mark.parametrize(("first_token_s", "expect"), [(None, False), (5.0, True)])
async def test_a_first_token_timeout_makes_a_plain_request_stream_from_the_engine(
        first_token_s: Optional[float], expect: bool) -> None:
    seen: list[GenerationRequest] = []

    async def generate(request: GenerationRequest) -> AsyncIterator[Event]:
        seen.append(request)
        yield ContentDelta("hi")
        yield Finish("stop")

    h = harness(retries=1)
    call = new_call(route(timeouts=Timeouts(first_token_s=first_token_s, total_s=30)))
    plain = dataclasses.replace(REQUEST, streamed=False)
    async with aclosing(h.stage.wrap(call, generate)(plain)) as events:  # type: ignore[type-var]
        assert [e async for e in events] == [ContentDelta("hi"), Finish("stop")]
    assert seen[0].streamed is expect  # without one, the engine may answer in one piece
