"""The upstream engine against hostile or broken upstreams: odd probe answers, refused credentials, rate limits,
internals that must stay in our log, transport failures and their retry verdicts, the connection pool, and usage
over a thinking-budget continuation. Every upstream here is a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any, Optional

import aiohttp
import pytest
from aiohttp import web

from tests.support.loopback_http import (
    SSE_HEADERS,
    Handler,
    answer,
    closed_port,
    http_server,
    read_request_head,
    sse,
    sse_body,
    tcp_server,
)
from tests.support.flush_rules import check_flush_rules
from unimodel.service.assemble import merge_deltas
from tests.support.requests import gen_request
from tests.support.scripted_upstream import Script, ScriptedUpstream
from unimodel.engines.base import GenerationRequest
from unimodel.engines.sse_lines import MAX_LINE_BYTES
from unimodel.engines.upstream import UpstreamEngine
from unimodel.engines.upstream_errors import CREDENTIALS_REFUSED
from unimodel.engines.upstream_stream import UpstreamStreamDecoder
from unimodel.errors import (
    RateLimitError,
    UnimodelError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from unimodel.formats.registry import get_format
from unimodel.engines.verdicts import Verdict, classify
from unimodel.protocol.events import ContentDelta, Event, Finish, Flush, ThinkingBudgetReached, Usage
from unimodel.service.assemble import ChunkEncoder, CompletionBuilder

ClientMiddleware = Callable[[aiohttp.ClientRequest, Any], Awaitable[aiohttp.ClientResponse]]
HI = {"choices": [{"index": 0, "delta": {"content": "hi"}}]}
STOP = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}


@asynccontextmanager
async def _started(url: str, **kw: Any) -> AsyncIterator[UpstreamEngine]:
    """A started engine at ``url`` (its own session unless ``session=`` is given); the probe loop waits long."""
    kw.setdefault("probe_interval_s", 60.0)
    engine = UpstreamEngine(url, served_model_name="small4", **kw)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.aclose()


@asynccontextmanager
async def _engine(handler: Handler, **kw: Any) -> AsyncIterator[UpstreamEngine]:
    async with http_server(handler) as url, _started(url, **kw) as engine:
        yield engine


def _request(model: str = "small4", stream: bool = True, **overrides: Any) -> GenerationRequest:
    """A streamed request unless ``stream=False`` (then the upstream is asked for one JSON body)."""
    wire = {"model": model, "messages": [{"role": "user", "content": "What is six times seven?"}], "stream": stream}
    return gen_request("r", model, wire, overrides.pop("max_tokens", None), **overrides)


async def _collect(engine: UpstreamEngine, request: GenerationRequest) -> list[Event]:
    return [e async for e in engine.generate(request)]


async def _error_of(engine: UpstreamEngine, request: Optional[GenerationRequest] = None) -> UnimodelError:
    with pytest.raises(UnimodelError) as err:
        await _collect(engine, request or _request())
    return err.value


def _raising(exc: Exception) -> ClientMiddleware:
    """A client middleware that fails every request as ``exc`` (what a bug in the client stack would do)."""
    async def middleware(request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        raise exc

    return middleware


def _is_models(request: web.Request) -> bool:
    return request.path.endswith("/models")


# raw upstreams that are not HTTP servers, or stop being one
async def _hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request_head(reader)  # then the connection is closed without an answer


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request_head(reader)
    writer.write(b"SSH-2.0-OpenSSH_9.6 internal-upstream.corp.example\r\n\r\n")
    await writer.drain()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_request_head(reader)
    await reader.read()  # says nothing until the client gives up


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
    (307, b"{\"data\": []}", False, {}),  # a redirect is not followed
])
async def test_probe_survives_any_body(status: int, body: bytes, ready: bool, models: dict[str, Any]) -> None:
    headers = {"Location": "/v1/elsewhere"} if status == 307 else None
    async with _engine(answer(status, body, headers=headers)) as engine:
        assert await engine.probe() is ready
        assert engine.is_ready() is ready
        if ready:
            assert engine._discovered == models


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyError("data"), TypeError("x"), UnicodeError("u"),
                                 aiohttp.ClientConnectionError("refused"), aiohttp.SocketTimeoutError("slow")])
async def test_probe_survives_any_exception_in_the_client(exc: Exception) -> None:
    async with http_server(answer(json_body={"data": []})) as url, \
            aiohttp.ClientSession(middlewares=(_raising(exc),)) as session:
        engine = UpstreamEngine(url, served_model_name="small4", session=session)
        engine._ready = True  # was ready: must now say not ready
        assert await engine.probe() is False and not engine.is_ready()


@pytest.mark.parametrize("upstream", [None, _hangs_up, _garbage, _silent])
async def test_probe_survives_a_broken_upstream(upstream: Any) -> None:
    async def probe(url: str) -> bool:
        async with _started(url, connect_timeout_s=0.3) as engine:
            engine._ready = True
            return await engine.probe() or engine.is_ready()

    if upstream is None:  # nothing listens
        assert await probe(closed_port()) is False
        return
    async with tcp_server(upstream) as url:
        assert await probe(url) is False


async def test_probe_does_not_swallow_cancellation() -> None:
    async def hang(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.json_response({"data": []})

    async with http_server(hang) as url, aiohttp.ClientSession() as session:
        engine = UpstreamEngine(url, served_model_name="small4", session=session)
        task = asyncio.create_task(engine.probe())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


async def test_probe_loop_follows_the_upstream_through_bad_bodies(caplog: pytest.LogCaptureFixture) -> None:
    answers = [b"{\"data\": []}", b"{\"data\": null}", b"null", b"{\"data\": [1, \"x\", {\"id\": 3}]}", b"oops",
               b"{\"data\": [{\"id\": \"small4\"}]}"]
    seen: list[int] = []
    served: list[int] = []

    async def client_bug_at_the_fourth(request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        seen.append(1)
        if len(seen) == 4:
            raise RuntimeError("a bug in the client stack")
        return await handler(request)

    async def handle(request: web.Request) -> web.StreamResponse:
        served.append(1)
        return web.Response(body=answers[min(len(served), len(answers)) - 1])

    async with http_server(handle) as url, aiohttp.ClientSession(middlewares=(client_bug_at_the_fourth,)) as session, \
            _started(url, session=session, probe_interval_s=0.05) as engine:
        states: list[bool] = []
        deadline = time.monotonic() + 10
        while len(seen) < 8 and time.monotonic() < deadline:
            states.append(engine.is_ready())
            await asyncio.sleep(0.01)
        assert len(seen) >= 8, "the probe loop stopped"
        assert engine._probe_task is not None and not engine._probe_task.done()
        assert engine.is_ready() and False in states  # it noticed the bad answers, then the good one


async def test_probe_loop_survives_an_unexpected_error_in_probe(monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    async with _engine(answer(json_body={"data": []}), probe_interval_s=0.05) as engine:
        real = engine.probe
        calls = 0

        async def flaky() -> bool:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("a bug in probe itself")
            return await real()

        monkeypatch.setattr(engine, "probe", flaky)
        deadline = time.monotonic() + 10
        while calls < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert calls >= 3 and engine.is_ready()
        assert "probe loop failed" in caplog.text


# ---- status mapping and what clients may see -------------------------------------------------------------

@pytest.mark.parametrize("status", [401, 403])
async def test_refused_credentials_are_502_with_our_message(status: int, caplog: pytest.LogCaptureFixture) -> None:
    leak = "Incorrect API key provided: sk-proj-abc123****wxyz"
    async with _engine(answer(status, json_body={"error": {"message": leak, "code": "bad"}}),
                       api_key="sk-proj-abc123secretwxyz") as engine:
        err = await _error_of(engine)
    assert isinstance(err, UpstreamError) and err.status_code == 502
    assert err.message == CREDENTIALS_REFUSED and "--upstream-api-key" in err.message
    assert "sk-" not in json.dumps(err.to_dict())
    assert leak in caplog.text  # the operator still sees what the upstream said


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
    async with _engine(answer(429, json_body=body, headers=header)) as engine:
        err = await _error_of(engine)
    assert isinstance(err, RateLimitError) and err.status_code == 429
    assert "org-secret123" not in err.message
    if expect is None:
        assert err.retry_after is None and "Retry-After" not in err.headers()
    else:
        assert err.retry_after == pytest.approx(expect, abs=2.0)
        assert int(err.headers()["Retry-After"]) == max(1, round(err.retry_after or 0))


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
    async with _engine(answer(500, json_body={"error": {"message": trace, "code": 500}})) as engine:
        err = await _error_of(engine)
    assert isinstance(err, UpstreamStatusError) and err.status_code == 502
    assert err.message == "the upstream failed (HTTP 500)"
    assert "CUDA" in caplog.text


@pytest.mark.parametrize("body", [b"[" * 100_000, b"\xff\xfe<html>", b"", b"{\"error\": [1]}"])
async def test_an_error_status_with_any_body_is_our_502(body: bytes) -> None:
    async with _engine(answer(503, body)) as engine:
        err = await _error_of(engine)
    assert isinstance(err, UpstreamStatusError) and err.status_code == 502
    assert err.message == "the upstream failed (HTTP 503)"


async def test_client_errors_keep_the_upstreams_words() -> None:
    async with _engine(answer(400, json_body={"error": {"message": "maximum context length is 10",
                                                         "param": "messages", "code": 400}})) as engine:
        err = await _error_of(engine)
    assert err.status_code == 400 and err.message == "maximum context length is 10" and err.param == "messages"


@pytest.mark.parametrize("upstream,cls,message,verdict", [
    (None, UpstreamConnectionError, "cannot connect to the upstream", Verdict.RETRY),
    (_hangs_up, UpstreamError, "the upstream connection failed", Verdict.RETRY),
    (_garbage, UpstreamError, "the upstream connection failed", Verdict.RETRY),
    (_silent, UpstreamTimeoutError, "the upstream did not answer in time (ReadTimeout)", Verdict.FAILOVER),
])
async def test_connection_failures_do_not_reveal_the_upstream(upstream: Any, cls: type[Exception], message: str,
                                                              verdict: Verdict,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    async def fail(url: str) -> UnimodelError:
        async with _started(url, connect_timeout_s=0.5, read_timeout_s=0.5) as engine:
            return await _error_of(engine)

    if upstream is None:  # nothing listens
        url = closed_port()
        err = await fail(url)
    else:
        async with tcp_server(upstream) as url:
            err = await fail(url)
    port = url.rsplit(":", 1)[1].split("/")[0]
    assert isinstance(err, cls) and err.message == message
    assert "127.0.0.1" not in json.dumps(err.to_dict()) and port not in err.message
    assert "internal-upstream" not in json.dumps(err.to_dict())
    assert url in caplog.text  # the operator sees where
    assert classify(err) is verdict


async def test_the_read_timeout_bounds_a_whole_body_but_only_the_silences_of_a_stream() -> None:
    """A client that does not stream is answered from one upstream body: the read timeout is then the whole
    generation. The same answer, streamed, keeps the connection busy and is served."""
    read_timeout_s, frames, gap_s = 0.5, 16, 0.05  # either answer takes 0.8 s; a stream is never 0.5 s silent

    async def slow(request: web.Request) -> web.StreamResponse:
        if _is_models(request):
            return web.json_response({"data": []})
        if not json.loads(await request.read())["stream"]:
            await asyncio.sleep(frames * gap_s)  # generating, then the whole body at once
            return web.json_response({"choices": [{"message": {"content": "hi" * frames}, "finish_reason": "stop"}]})
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        for _ in range(frames):
            await asyncio.sleep(gap_s)
            await resp.write(sse_body(HI))
        await resp.write(sse_body(STOP, "[DONE]"))
        return resp

    async with _engine(slow, read_timeout_s=read_timeout_s, parse_mode="upstream") as engine:
        err = await _error_of(engine, _request(stream=False))
        streamed = await _collect(engine, _request())
    assert isinstance(err, UpstreamTimeoutError)
    assert err.message == "the upstream did not answer in time (ReadTimeout)"
    assert [e for e in streamed if isinstance(e, ContentDelta)] == [ContentDelta("hi")] * frames
    assert streamed[-1] == Finish("stop")


async def test_a_full_pool_waits_at_most_the_connect_timeout_and_that_is_retryable() -> None:
    async def hold(request: web.Request) -> web.StreamResponse:
        if _is_models(request):
            return web.json_response({"data": []})
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        await resp.write(sse_body(HI))
        await asyncio.sleep(30)  # keeps the pool's only connection (cancelled when the client closes it)
        return resp

    async with _engine(hold, max_connections=1) as engine:
        async with aclosing(engine.generate(_request())) as first:  # type: ignore[type-var]
            assert await anext(first) == ContentDelta("hi")
            err = await _error_of(engine, _request(connect_timeout_s=0.2))
    assert isinstance(err, UpstreamTimeoutError)
    assert err.message == "the upstream did not answer in time (ConnectTimeout)"
    assert classify(err) is Verdict.RETRY


async def test_a_consumer_that_stops_early_closes_the_upstream_connection() -> None:
    left = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        if _is_models(request):
            return web.json_response({"data": []})
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        try:
            for _ in range(600):
                await resp.write(sse_body(HI))
                await asyncio.sleep(0.05)
        except (asyncio.CancelledError, ConnectionResetError):
            left.set()  # the client closed the connection: the upstream stops its work
            raise
        return resp

    async with _engine(endless) as engine:
        async with aclosing(engine.generate(_request())) as events:  # type: ignore[type-var]
            assert await anext(events) == ContentDelta("hi")
        await asyncio.wait_for(left.wait(), 10)


async def test_answers_read_to_the_end_leave_the_connection_to_the_next_request() -> None:
    peers: list[int] = []
    answers = [
        web.Response(body=sse_body(HI, STOP, "[DONE]"), headers=SSE_HEADERS),
        web.json_response({"error": {"message": "bad", "code": 400}}, status=400),
        web.json_response({"choices": [{"message": {"content": "whole"}, "finish_reason": "stop"}]}),
        web.Response(body=sse_body(HI, STOP, "[DONE]"), headers=SSE_HEADERS),
    ]

    async def handle(request: web.Request) -> web.StreamResponse:
        peers.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        await request.read()
        if _is_models(request):
            return web.json_response({"data": []})
        return answers[len(peers) - 2]

    async with _engine(handle) as engine:
        assert (await _collect(engine, _request()))[0] == ContentDelta("hi")
        assert (await _error_of(engine)).status_code == 400
        assert (await _collect(engine, _request()))[0] == ContentDelta("whole")
        assert (await _collect(engine, _request()))[0] == ContentDelta("hi")
    assert len(peers) == 5 and len(set(peers)) == 1  # the probe and four answers over one connection


async def test_the_client_keeps_no_cookies_follows_no_redirects_and_ignores_proxy_variables(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, closed_port().removesuffix("/v1"))  # a proxy that would refuse us
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    cookies: list[Optional[str]] = []
    paths: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        cookies.append(request.headers.get("Cookie"))
        paths.append(request.path)
        await request.read()
        if _is_models(request):
            resp: web.StreamResponse = web.json_response({"data": []})
        elif len(paths) == 2:
            resp = web.Response(body=sse_body(HI, STOP), headers=SSE_HEADERS)
        else:
            raise web.HTTPTemporaryRedirect("/v1/elsewhere")
        resp.set_cookie("session", "upstream-state")
        return resp

    async with http_server(handle) as url, _started(url.replace("127.0.0.1", "localhost")) as engine:
        # a host name, not an address: a cookie jar would keep this upstream's cookies
        assert engine.is_ready()  # reached directly, not through the proxy
        assert (await _collect(engine, _request()))[0] == ContentDelta("hi")
        err = await _error_of(engine)
    assert isinstance(err, UpstreamError) and err.message == "the upstream answered with a body that is not JSON"
    assert paths == ["/v1/models", "/v1/chat/completions", "/v1/chat/completions"]  # the redirect not followed
    assert cookies == [None, None, None]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
async def test_frames_cut_anywhere_decode_whatever_the_line_ending(ending: bytes) -> None:
    line_sep = {"choices": [{"index": 0, "delta": {"content": "a\u2028b \u00e9\U0001f389"}}]}
    body = "".join(f"data: {json.dumps(f, ensure_ascii=False)}\n\n" for f in [HI, line_sep, STOP]).encode()
    body = (body + b"data: [DONE]").replace(b"\n", ending)  # the last line ends with the stream

    async def trickle(request: web.Request) -> web.StreamResponse:
        if _is_models(request):
            return web.json_response({"data": []})
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        for i in range(0, len(body), 7):  # pieces that cut lines, frames and UTF-8 sequences
            await resp.write(body[i:i + 7])
            await asyncio.sleep(0)
        return resp

    async with _engine(trickle, parse_mode="upstream") as engine:
        events = await _collect(engine, _request())
    assert [e for e in events if isinstance(e, ContentDelta)] == [ContentDelta("hi"),
                                                                   ContentDelta("a\u2028b \u00e9\U0001f389")]
    assert events[-1] == Finish("stop")


async def test_a_line_without_end_past_the_bound_is_an_error_not_memory() -> None:
    async def flood(request: web.Request) -> web.StreamResponse:
        if _is_models(request):
            return web.json_response({"data": []})
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        piece = b"x" * (1 << 20)
        await resp.write(b"data: ")
        for _ in range(MAX_LINE_BYTES // len(piece) + 2):
            await resp.write(piece)
        return resp

    async with _engine(flood) as engine:
        err = await _error_of(engine)
    assert isinstance(err, UpstreamError) and "stream line over" in err.message and err.status_code == 502


@pytest.mark.parametrize("frame,status,message", [
    ({"error": {"message": "/opt/vllm/x.py: CUDA error", "code": 500}}, 502, "the upstream failed (HTTP 500)"),
    ({"error": {"message": "/opt/vllm/x.py: CUDA error"}}, 502, "the upstream failed (HTTP 502)"),
    ({"error": "/opt/vllm/x.py: CUDA error"}, 502, "the upstream reported an error"),
    ({"error": {"message": "bad key sk-abc", "code": 401}}, 502, CREDENTIALS_REFUSED),
    ({"error": {"message": "prompt too long", "code": 400}}, 400, "prompt too long"),
    ("{\"secret\": \"/opt/vllm/x.py", 502, "the upstream sent a malformed stream frame"),
])
async def test_embedded_errors_are_ours_unless_the_client_is_at_fault(frame: Any, status: int, message: str) -> None:
    async with _engine(sse({"choices": [{"index": 0, "delta": {"content": "hi"}}]}, frame)) as engine:
        err = await _error_of(engine)
    assert err.status_code == status and err.message == message


@pytest.mark.parametrize("frame", [
    {"choices": 5}, {"choices": [{"index": 0, "delta": {"tool_calls": "abc"}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": "x", "function": "f"}]}}]},
    {"choices": [{"index": 0, "delta": {"content": "ok"}}], "usage": {"prompt_tokens": "many"}, "error": None},
    {"choices": [], "usage": {"prompt_tokens": float("inf"), "completion_tokens": -3,
                              "completion_tokens_details": {"reasoning_tokens": 10 ** 400}}},
    {"choices": {"a": 1}}, {"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": ["a"]}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": {"a": 1}}]},
])
async def test_odd_frames_do_not_crash_the_decoder(frame: dict[str, Any]) -> None:
    async with _engine(sse(frame, STOP, "[DONE]")) as engine:
        events = await _collect(engine, _request())
    assert isinstance(events[-2], Usage) and events[-2].prompt_tokens >= 0


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


def _frame(delta: dict[str, Any], finish: Optional[str] = None, **extra: Any) -> bytes:
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                                   **extra}).encode()


def test_decoder_usage_reported_is_not_estimated() -> None:
    dec = _decoder()
    dec.sse_line(_frame({"content": "hi"}, "stop"))
    dec.sse_line(b"data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}).encode())
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


async def test_a_flush_follows_the_events_of_each_network_read_and_never_leads() -> None:
    async def two_reads(request: web.Request) -> web.StreamResponse:
        if _is_models(request):
            return web.json_response({"data": []})
        resp = web.StreamResponse(headers=SSE_HEADERS)
        await resp.prepare(request)
        await resp.write(sse_body({"choices": [{"index": 0, "delta": {"content": "a"}}]}))
        await asyncio.sleep(0.3)  # the engine reads "a" alone, then waits
        await resp.write(sse_body({"choices": [{"index": 0, "delta": {"content": "b"}}]},
                                  {"choices": [{"index": 0, "delta": {"content": "c"}}]}, STOP, "[DONE]"))
        return resp

    async with _engine(two_reads, parse_mode="upstream") as engine:
        batches = check_flush_rules(await _collect(engine, _request()))
    assert batches[0] == [ContentDelta("a")]
    assert batches[1] == [ContentDelta("b"), ContentDelta("c")]
    assert isinstance(batches[-1][-1], Finish)


async def test_a_plain_request_gets_one_body_from_the_upstream_with_the_same_events() -> None:
    with ScriptedUpstream(_scripts()) as up:
        engine = UpstreamEngine(up.base_url)
        await engine.start()
        try:
            streamed = await _collect(engine, _request("thinker"))
            plain = await _collect(engine, _request("thinker", stream=False))
        finally:
            await engine.aclose()
    def answer(events: list[Event]) -> list[Event]:
        return merge_deltas([e for e in events if not isinstance(e, (Flush, Usage))])

    assert answer(streamed) == answer(plain)
    assert not _usage(plain).estimated  # the body's own usage
