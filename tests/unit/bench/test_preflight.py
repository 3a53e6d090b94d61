"""The test request before a benchmark, against real loopback servers: each way an endpoint can refuse the
workload becomes one line that says what to fix; a request that gets its first token passes at once."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Optional

import pytest
from aiohttp import web

from tests.support.loopback_http import SSE_HEADERS, closed_port, http_server, sse_body
from unimodel.bench.client import Target
from unimodel.bench.preflight import PreflightFailed, first_of_each_kind, preflight
from unimodel.bench.workloads import build_workload

TOKEN = {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}


def server(chat: web.Response, models: Optional[list[str]] = None, seen: Optional[list[Any]] = None) -> Any:
    """Answers POST .../chat/completions with ``chat`` and GET .../models with ``models`` (None: 404)."""
    async def handle(request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path.endswith("/models"):
            if models is None:
                return web.Response(status=404, text="<html>Not Found</html>", content_type="text/html")
            return web.json_response({"object": "list", "data": [{"id": m} for m in models]})
        body = await request.json()
        if seen is not None:
            seen.append(body)
        return web.Response(status=chat.status, body=chat.body, headers=chat.headers)
    return http_server(handle)


def error(status: int, message: str, code: str, param: Optional[str] = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error", "code": code,
                                        "param": param}}, status=status)


async def check(url: str, workload: str = "chat", model: str = "m", key: Optional[str] = None) -> str:
    """The one line the preflight fails with (it must fail)."""
    with pytest.raises(PreflightFailed) as failed:
        await preflight(Target(url, api_key=key, timeout_s=20), build_workload(workload), model, None)
    line = str(failed.value)
    assert "\n" not in line
    return line


async def test_a_dead_url() -> None:
    url = closed_port()
    assert await check(url) == (f"cannot connect to {url} (Connection refused): is the server running, and is "
                                "--url right?")


async def test_a_model_that_is_not_served_names_the_served_ones() -> None:
    served = [f"model-{i}" for i in range(12)]
    async with server(error(404, "The model 'nope' does not exist.", "model_not_found", "model"), served) as url:
        line = await check(url, model="nope")
    assert line == (f"model 'nope' is not served at {url}; it serves: " + ", ".join(served[:10])
                    + " and 2 more (pass one to --model)")


async def test_a_url_without_v1() -> None:
    async with server(web.Response(status=404, text="<html>no</html>", content_type="text/html")) as url:
        root = url.removesuffix("/v1")
        line = await check(root)
    assert line == (f"the server at {root} answered 404 for /chat/completions: is the URL missing /v1 "
                    f"(try --url {root}/v1)?")


async def test_a_web_page_instead_of_an_api() -> None:
    async with server(web.Response(status=200, text="<html>dashboard</html>", content_type="text/html")) as url:
        assert "answered 200 with text/html, not an OpenAI chat completion" in await check(url)
        assert "is the URL missing /v1" in await check(url.removesuffix("/v1"))


async def test_a_key_is_missing_or_refused() -> None:
    async with server(error(401, "Missing API key.", "invalid_api_key")) as url:
        assert await check(url) == (f"the server at {url} refused the test request (401 invalid_api_key: "
                                    "Missing API key.): give --api-key KEY")
        assert (await check(url, key="sk-x")).endswith("): check --api-key")


async def test_a_route_that_caps_max_tokens_below_the_workloads() -> None:
    refusal = error(400, "max_tokens (2048) is above the cap of 512 tokens set by the route 'default'.",
                    "invalid_value", "max_tokens")
    async with server(refusal) as url:
        line = await check(url, workload="reasoning")
    assert line == (f"the server at {url} refused the reasoning workload's test request (400 invalid_value: "
                    "max_tokens (2048) is above the cap of 512 tokens set by the route 'default'.): it sends "
                    "max_tokens 2048; lower it with --max-tokens N")


async def test_a_huge_error_page_is_read_bounded_and_shown_short() -> None:
    async with server(web.Response(status=500, body=b"x" * (4 << 20))) as url:
        line = await check(url)
    assert line.startswith(f"the server at {url} refused the chat workload's test request (500: xxx")
    assert len(line) < 400


async def test_an_error_frame_in_the_stream() -> None:
    frame = {"error": {"message": "engine died", "type": "InternalServerError", "code": 500}}
    async with server(web.Response(body=sse_body(frame), headers=SSE_HEADERS)) as url:
        assert await check(url) == (f"the server at {url} failed the test request mid-stream "
                                    "(InternalServerError: engine died)")


async def test_the_first_token_is_enough_and_the_request_is_left() -> None:
    left = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        await response.write(sse_body(TOKEN))
        try:
            await asyncio.sleep(60)  # a 2,048-token answer the preflight must not wait for
        except asyncio.CancelledError:
            left.set()
            raise
        return response

    async with http_server(slow) as url:
        await asyncio.wait_for(preflight(Target(url), build_workload("reasoning"), "m", "high"), 20)
        await asyncio.wait_for(left.wait(), 20)  # the server saw the client hang up


async def test_one_request_of_each_kind_as_the_run_sends_it() -> None:
    seen: list[Any] = []
    async with server(web.Response(body=sse_body(TOKEN, "[DONE]"), headers=SSE_HEADERS), seen=seen) as url:
        await preflight(Target(url), build_workload("mixed"), "served", "none")
    assert len(seen) == 4
    assert [body["max_tokens"] for body in seen] == [128, 2048, 64, 256]  # chat, reasoning, vision, tools
    assert all(b["model"] == "served" and b["stream"] is True and b["reasoning_effort"] == "none" for b in seen)
    assert "tools" in seen[3] and json.dumps(seen[2]).count("data:image/png;base64,") == 1
    assert [kind for kind, _ in first_of_each_kind(build_workload("reasoning"), "m", None)] == ["reasoning"]


async def test_a_whole_json_answer_passes() -> None:
    whole = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}]}
    async with server(web.json_response(whole)) as url:
        await preflight(Target(url), build_workload("chat"), "m", None)
