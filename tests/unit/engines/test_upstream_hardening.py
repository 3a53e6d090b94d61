"""The upstream engine against hostile or broken upstreams: odd probe answers, refused credentials, rate limits,
internals that must stay in our log, and usage over a thinking-budget continuation."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Optional

import httpx
import pytest

from tests.support.requests import gen_request
from tests.support.scripted_upstream import Script, ScriptedUpstream
from unimodel.engines.base import GenerationRequest
from unimodel.engines.upstream import UpstreamEngine
from unimodel.engines.upstream_stream import CREDENTIALS_REFUSED, UpstreamStreamDecoder
from unimodel.errors import RateLimitError, UnimodelError, UpstreamError, UpstreamStatusError
from unimodel.formats.registry import get_format
from unimodel.protocol.events import Event, Finish, ThinkingBudgetReached, Usage
from unimodel.service.assemble import ChunkEncoder, CompletionBuilder

Handler = Callable[[httpx.Request], httpx.Response]
SECRET_HOST = "internal-upstream.corp.example"


def _engine(handler: Handler, **kw: Any) -> tuple[UpstreamEngine, httpx.AsyncClient]:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return UpstreamEngine(f"http://{SECRET_HOST}:8000/v1", served_model_name="small4", client=client,
                          probe_interval_s=0.05, **kw), client


def _request(model: str = "small4", **overrides: Any) -> GenerationRequest:
    wire = {"model": model, "messages": [{"role": "user", "content": "What is six times seven?"}]}
    return gen_request("r", model, wire, overrides.pop("max_tokens", None), **overrides)


async def _collect(engine: UpstreamEngine, request: GenerationRequest) -> list[Event]:
    return [e async for e in engine.generate(request)]


async def _error_of(engine: UpstreamEngine) -> UnimodelError:
    with pytest.raises(UnimodelError) as err:
        await _collect(engine, _request())
    return err.value


# ---- readiness probe --------------------------------------------------------------------------------------

@pytest.mark.parametrize("status,body,ready,models", [
    (200, b"null", False, {}),
    (200, b"[]", False, {}),
    (200, b"[{\"id\": \"m\"}]", False, {}),
    (200, b"\"data\"", False, {}),
    (200, b"<html>upstream gateway</html>", False, {}),
    (200, b"\xff\xfe not utf-8", False, {}),
    (200, b"", False, {}),
    (200, b"{}", True, {}),
    (200, b"{\"data\": null}", True, {}),
    (200, b"{\"data\": {\"id\": \"m\"}}", True, {}),
    (200, json.dumps({"data": [1, "x", {"id": 3}, {"id": True}, {"id": None}, {"id": "a", "max_model_len": "9"},
                               {"id": "b", "max_model_len": 4096}, {"id": "c", "max_model_len": False}]}).encode(),
     True, {"3": None, "a": None, "b": 4096, "c": None}),
    (401, b"{\"error\": {\"message\": \"bad key sk-abc\"}}", False, {}),
    (503, b"{\"data\": []}", False, {}),
])
async def test_probe_survives_any_body(status: int, body: bytes, ready: bool, models: dict[str, Any]) -> None:
    engine, client = _engine(lambda r: httpx.Response(status, content=body))
    try:
        assert await engine.probe() is ready
        assert engine.is_ready() is ready
        if ready:
            assert engine._discovered == models
    finally:
        await client.aclose()


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyError("data"), TypeError("x"),
                                 httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), UnicodeError("u")])
async def test_probe_survives_any_exception(exc: Exception) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    engine, client = _engine(handler)
    try:
        engine._ready = True  # was ready: must now say not ready
        assert await engine.probe() is False and not engine.is_ready()
    finally:
        await client.aclose()


async def test_probe_does_not_swallow_cancellation() -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200, json={"data": []})

    client = httpx.AsyncClient(transport=httpx.MockTransport(hang))
    engine = UpstreamEngine("http://up/v1", served_model_name="small4", client=client)
    task = asyncio.create_task(engine.probe())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    await client.aclose()


async def test_probe_loop_follows_the_upstream_through_bad_bodies(caplog: pytest.LogCaptureFixture) -> None:
    answers = [b"{\"data\": []}", b"{\"data\": null}", b"null", b"{\"data\": [1, \"x\", {\"id\": 3}]}", b"oops",
               b"{\"data\": [{\"id\": \"small4\"}]}"]
    seen: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(1)
        if len(seen) == 4:
            raise RuntimeError("a bug in a transport")
        return httpx.Response(200, content=answers[min(len(seen), len(answers)) - 1])

    engine, client = _engine(handler)
    await engine.start()
    try:
        states: list[bool] = []
        deadline = time.monotonic() + 10
        while len(seen) < 8 and time.monotonic() < deadline:
            states.append(engine.is_ready())
            await asyncio.sleep(0.01)
        assert len(seen) >= 8, "the probe loop stopped"
        assert engine._probe_task is not None and not engine._probe_task.done()
        assert engine.is_ready() and False in states  # it noticed the bad answers, then the good one
    finally:
        await engine.aclose()
        await client.aclose()


async def test_probe_loop_survives_an_unexpected_error_in_probe(monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    engine, client = _engine(lambda r: httpx.Response(200, json={"data": []}))
    await engine.start()
    real = engine.probe
    calls = 0

    async def flaky() -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in probe itself")
        return await real()

    monkeypatch.setattr(engine, "probe", flaky)
    try:
        deadline = time.monotonic() + 10
        while calls < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert calls >= 3 and engine.is_ready()
        assert "probe loop failed" in caplog.text
    finally:
        await engine.aclose()
        await client.aclose()


# ---- status mapping and what clients may see -------------------------------------------------------------

@pytest.mark.parametrize("status", [401, 403])
async def test_refused_credentials_are_502_with_our_message(status: int, caplog: pytest.LogCaptureFixture) -> None:
    leak = "Incorrect API key provided: sk-proj-abc123****wxyz"
    engine, client = _engine(lambda r: httpx.Response(status, json={"error": {"message": leak, "code": "bad"}}),
                             api_key="sk-proj-abc123secretwxyz")
    try:
        err = await _error_of(engine)
        assert isinstance(err, UpstreamError) and err.status_code == 502
        assert err.message == CREDENTIALS_REFUSED and "--upstream-api-key" in err.message
        assert "sk-" not in json.dumps(err.to_dict())
        assert leak in caplog.text  # the operator still sees what the upstream said
    finally:
        await client.aclose()


@pytest.mark.parametrize("header,expect", [
    ({"Retry-After": "7"}, 7.0),
    ({"Retry-After": "2.5"}, 2.5),
    ({"Retry-After": "__date+30"}, 30.0),
    ({"Retry-After": "Thu, 01 Jan 1970 00:00:00 GMT"}, 0.0),
    ({"Retry-After": "soon"}, None),
    ({"Retry-After": "inf"}, None),
    ({"retry-after-ms": "1500"}, 1.5),
    ({}, None),
])
async def test_rate_limit_keeps_retry_after(header: dict[str, str], expect: Optional[float]) -> None:
    if header.get("Retry-After") == "__date+30":
        header = {"Retry-After": email.utils.formatdate(time.time() + 30, usegmt=True)}
    body = {"error": {"message": "Rate limit reached for org-secret123 on tokens per min", "code": 429}}
    engine, client = _engine(lambda r: httpx.Response(429, json=body, headers=header))
    try:
        err = await _error_of(engine)
        assert isinstance(err, RateLimitError) and err.status_code == 429
        assert "org-secret123" not in err.message
        if expect is None:
            assert err.retry_after is None and "Retry-After" not in err.headers()
        else:
            assert err.retry_after == pytest.approx(expect, abs=2.0)
            assert int(err.headers()["Retry-After"]) == max(1, round(err.retry_after or 0))
    finally:
        await client.aclose()


async def test_rate_limit_over_a_real_socket_keeps_retry_after() -> None:
    script = Script(error_status=429, error_message="slow down", error_headers={"Retry-After": "12"})
    with ScriptedUpstream({"small4": script}) as up:
        engine = UpstreamEngine(up.base_url, served_model_name="small4")
        await engine.start()
        try:
            err = await _error_of(engine)
        finally:
            await engine.aclose()
    assert isinstance(err, RateLimitError) and err.headers() == {"Retry-After": "12"}


async def test_server_errors_are_502_without_upstream_internals(caplog: pytest.LogCaptureFixture) -> None:
    trace = "Traceback (most recent call last):\n  File \"/opt/vllm/engine.py\", line 9\nCUDA error: out of memory"
    engine, client = _engine(lambda r: httpx.Response(500, json={"error": {"message": trace, "code": 500}}))
    try:
        err = await _error_of(engine)
        assert isinstance(err, UpstreamStatusError) and err.status_code == 502
        assert err.message == "the upstream failed (HTTP 500)"
        assert "CUDA" in caplog.text
    finally:
        await client.aclose()


async def test_client_errors_keep_the_upstreams_words() -> None:
    engine, client = _engine(lambda r: httpx.Response(
        400, json={"error": {"message": "maximum context length is 10", "param": "messages", "code": 400}}))
    try:
        err = await _error_of(engine)
        assert err.status_code == 400 and err.message == "maximum context length is 10" and err.param == "messages"
    finally:
        await client.aclose()


@pytest.mark.parametrize("exc,cls,message", [
    (httpx.ConnectError(f"[Errno -2] Name or service not known: {SECRET_HOST}"), UpstreamError,
     "cannot connect to the upstream"),
    (httpx.RemoteProtocolError(f"peer {SECRET_HOST} closed connection"), UpstreamError,
     "the upstream connection failed"),
    (httpx.ReadTimeout(f"timed out reading from {SECRET_HOST}"), UpstreamError,
     "the upstream did not answer in time (ReadTimeout)"),
])
async def test_connection_failures_do_not_reveal_the_upstream(exc: Exception, cls: type[Exception], message: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": []})
        raise exc

    engine, client = _engine(handler)
    try:
        err = await _error_of(engine)
        assert isinstance(err, cls) and err.message == message
        assert SECRET_HOST not in json.dumps(err.to_dict()) and "8000" not in err.message
        assert SECRET_HOST in caplog.text
    finally:
        await client.aclose()


def _sse(*frames: Any) -> Handler:
    body = "".join(f"data: {f if isinstance(f, str) else json.dumps(f)}\n\n" for f in frames).encode()
    return lambda r: httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})


@pytest.mark.parametrize("frame,status,message", [
    ({"error": {"message": "/opt/vllm/x.py: CUDA error", "code": 500}}, 502, "the upstream failed (HTTP 500)"),
    ({"error": {"message": "/opt/vllm/x.py: CUDA error"}}, 502, "the upstream failed (HTTP 502)"),
    ({"error": "/opt/vllm/x.py: CUDA error"}, 502, "the upstream reported an error"),
    ({"error": {"message": "bad key sk-abc", "code": 401}}, 502, CREDENTIALS_REFUSED),
    ({"error": {"message": "prompt too long", "code": 400}}, 400, "prompt too long"),
    ("{\"secret\": \"/opt/vllm/x.py", 502, "the upstream sent a malformed stream frame"),
])
async def test_embedded_errors_are_ours_unless_the_client_is_at_fault(frame: Any, status: int, message: str) -> None:
    engine, client = _engine(_sse({"choices": [{"index": 0, "delta": {"content": "hi"}}]}, frame))
    try:
        err = await _error_of(engine)
        assert err.status_code == status and err.message == message
    finally:
        await client.aclose()


@pytest.mark.parametrize("frame", [
    {"choices": 5}, {"choices": [{"index": 0, "delta": {"tool_calls": "abc"}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": "x", "function": "f"}]}}]},
    {"choices": [{"index": 0, "delta": {"content": "ok"}}], "usage": {"prompt_tokens": "many"}, "error": None},
    {"choices": [], "usage": {"prompt_tokens": float("inf"), "completion_tokens": -3,
                              "completion_tokens_details": {"reasoning_tokens": 10 ** 400}}},
])
async def test_odd_frames_do_not_crash_the_decoder(frame: dict[str, Any]) -> None:
    engine, client = _engine(_sse(frame, {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                                  "[DONE]"))
    try:
        events = await _collect(engine, _request())
        assert isinstance(events[-2], Usage) and events[-2].prompt_tokens >= 0
    finally:
        await client.aclose()


# ---- usage -----------------------------------------------------------------------------------------------

def test_usage_add_keeps_estimated() -> None:
    assert (Usage(1, 2, 1) + Usage(3, 4, 0)) == Usage(4, 6, 1, False)
    assert (Usage(1, 2) + Usage(3, 4, estimated=True)).estimated
    assert (Usage(1, 2, estimated=True) + Usage(3, 4)).estimated


def test_assembly_renders_estimated_usage() -> None:
    usage = Usage(10, 5, 2, estimated=True)
    done = CompletionBuilder().add_all([usage]).completion("r", "m").model_dump()
    assert done["usage"]["prompt_tokens"] == 10 and "estimated" not in json.dumps(done["usage"])
    enc = ChunkEncoder("r", "m", include_usage=True)
    enc.encode(usage)
    last = enc.encode(Finish("stop"))[-1]
    assert last["usage"]["total_tokens"] == 15


def _decoder(count: Optional[Callable[[str], int]] = None, prompt: str = "") -> UpstreamStreamDecoder:
    dec = UpstreamStreamDecoder(get_format("mistral"), parse_content=True)
    dec.set_counting(count, lambda: prompt)
    return dec


def _frame(delta: dict[str, Any], finish: Optional[str] = None, **extra: Any) -> str:
    return "data: " + json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})


def test_decoder_usage_reported_is_not_estimated() -> None:
    dec = _decoder()
    dec.sse_line(_frame({"content": "hi"}, "stop"))
    dec.sse_line("data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}))
    usage = [e for e in dec.close() if isinstance(e, Usage)][0]
    assert usage == Usage(5, 1, 0, estimated=False)


def test_decoder_estimates_a_stream_without_usage() -> None:
    dec = _decoder(prompt="x" * 40)
    for piece in ("[THINK]", "ab", "cd", "[/THINK]", "Hello", " there"):
        dec.sse_line(_frame({"content": piece}))
    dec.sse_line(_frame({}, "stop"))
    usage = [e for e in dec.close() if isinstance(e, Usage)][0]
    assert usage.estimated and usage.prompt_tokens == 10  # 40 characters / 4
    assert usage.completion_tokens == 6 and usage.reasoning_tokens == 2  # one token a frame


def test_decoder_counts_with_a_tokenizer_when_usage_is_missing() -> None:
    words = lambda s: len(s.split())  # noqa: E731
    dec = _decoder(words, prompt="one two three")
    for piece in ("[THINK]", "think ", "hard ", "now", "[/THINK]", "the answer ", "is 42"):
        dec.sse_line(_frame({"content": piece}))
    dec.sse_line(_frame({}, "stop"))
    usage = [e for e in dec.close() if isinstance(e, Usage)][0]
    assert usage == Usage(3, 7, 3, estimated=True)


def test_decoder_estimates_a_whole_body_without_usage_and_survives_a_failing_tokenizer() -> None:
    def broken(text: str) -> int:
        raise RuntimeError("tokenizer gone")

    dec = _decoder(broken, prompt="p" * 8)
    events = dec.whole_response({"choices": [{"message": {"content": "[THINK]" + "r" * 40 + "[/THINK]" + "a" * 20},
                                              "finish_reason": "stop"}]})
    usage = [e for e in events if isinstance(e, Usage)][0]
    assert usage == Usage(2, 15, 10, estimated=True)


THINKER = Script(mode="raw", reasoning="t " * 300, content="The answer is 42.", chunk_chars=2)


def _scripts() -> dict[str, Script]:
    return {
        "thinker": THINKER,
        "mute": Script(mode="raw", reasoning="t " * 300, content="The answer is 42.", chunk_chars=2,
                       report_usage=False, continuous_usage=False),
        "mute-plain": Script(mode="raw", content="The answer is 42.", chunk_chars=2, report_usage=False),
    }


async def _generate(up: ScriptedUpstream, model: str, *, budget: Optional[int],
                    count: Optional[Callable[[str], int]] = None, max_tokens: Optional[int] = None) -> list[Event]:
    engine = UpstreamEngine(up.base_url, count_tokens=count)
    await engine.start()
    try:
        return await asyncio.wait_for(
            _collect(engine, _request(model, thinking_budget=budget, max_tokens=max_tokens)), 30)
    finally:
        await engine.aclose()


def _usage(events: list[Event]) -> Usage:
    found = [e for e in events if isinstance(e, Usage)]
    assert len(found) == 1
    return found[0]


async def test_continuation_usage_counts_the_prompt_once() -> None:
    with ScriptedUpstream(_scripts()) as up:
        events = await _generate(up, "thinker", budget=50)
        calls = up.requests
    assert len(calls) == 2 and any(isinstance(e, ThinkingBudgetReached) for e in events)
    usage = _usage(events)
    # first call: cut after 51 frames (the [THINK] marker frame, then 50 of thinking); vLLM-style usage in
    # every frame says so. Continuation: "The answer is 42." in 2-character frames, 9 tokens
    assert usage.prompt_tokens == 11  # the request's, not 11 + the continuation's 111
    assert usage.completion_tokens == 51 + 9
    assert usage.reasoning_tokens == 50
    assert not usage.estimated


async def test_usage_of_an_upstream_that_reports_none_is_counted_and_marked() -> None:
    words = lambda s: len(s.split())  # noqa: E731
    with ScriptedUpstream(_scripts()) as up:
        counted = _usage(await _generate(up, "mute", budget=50, count=words))
        estimated = _usage(await _generate(up, "mute", budget=50))
        plain = _usage(await _generate(up, "mute-plain", budget=None))
    assert counted.estimated and estimated.estimated and plain.estimated
    assert counted.prompt_tokens == len("What is six times seven?".split())  # our tokenizer, the request only
    assert counted.reasoning_tokens == 50 and counted.completion_tokens == 50 + 4
    assert estimated.prompt_tokens == 6  # 24 characters / 4
    assert estimated.completion_tokens == 51 + 9 and estimated.reasoning_tokens == 50  # frames
    assert plain.prompt_tokens == 6 and plain.completion_tokens == 9 and plain.reasoning_tokens == 0


async def test_budget_leaving_no_room_reports_the_first_calls_usage() -> None:
    with ScriptedUpstream(_scripts()) as up:
        events = await _generate(up, "thinker", budget=50, max_tokens=40)
        assert len(up.requests) == 1
    usage = _usage(events)
    assert usage.prompt_tokens == 11 and usage.completion_tokens >= 40


@pytest.fixture(autouse=True)
def _log_at_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="unimodel")
