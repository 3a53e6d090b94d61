"""One timed streaming request: what each kind of chunk and each failure makes of the record."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from unimodel.bench.client import RequestRecord, Target, make_client, send

URL = "http://bench.test/v1/chat/completions"


def sse(*frames: Any, done: bool = True) -> bytes:
    out = b"".join(b"data: " + (f if isinstance(f, bytes) else json.dumps(f).encode()) + b"\n\n" for f in frames)
    return out + (b"data: [DONE]\n\n" if done else b"")


def delta(**d: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": d, "finish_reason": None}]}


async def run(handler: Callable[[httpx.Request], httpx.Response]) -> tuple[RequestRecord, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def wrapped(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(wrapped)) as client:
        record = await send(client, URL, {"model": "m", "messages": []}, index=3, kind="chat", effort="high")
    return record, seen


def stream_response(body: bytes, status: int = 200) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, headers={"content-type": "text/event-stream"}, content=body)


async def test_thinking_then_answer_then_usage() -> None:
    body = sse(delta(role="assistant", content=""), delta(reasoning="Let"), delta(reasoning_content=" me"),
               delta(content="Four"), delta(content="."),
               {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4,
                                         "completion_tokens_details": {"reasoning_tokens": 2}}})
    record, _ = await run(stream_response(body))
    assert record.ok and record.status == 200
    assert (record.index, record.kind, record.effort) == (3, "chat", "high")
    assert record.start <= record.first_byte <= record.first_token <= record.first_answer <= record.last_token
    assert record.last_token <= record.end
    assert len(record.chunk_times) == 4  # the empty role chunk is no token
    assert (record.reasoning_chunks, record.answer_chunks) == (2, 2)
    assert record.first_token == record.chunk_times[0] and record.first_answer == record.chunk_times[2]
    assert (record.prompt_tokens, record.output_tokens, record.reasoning_tokens, record.answer_tokens) == (9, 4, 2, 2)
    assert record.output_tokens_source == "usage" and record.reasoning_tokens_source == "usage"


async def test_tool_calls_are_answer_tokens() -> None:
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "get_time", "arguments": ""}}
    record, _ = await run(stream_response(sse(delta(tool_calls=[call]),
                                              delta(tool_calls=[{"index": 0, "function": {"arguments": "{}"}}]))))
    assert record.ok and record.first_answer == record.first_token and record.answer_chunks == 2
    assert record.output_tokens == 2 and record.output_tokens_source == "counted"


async def test_http_error_keeps_status_and_message() -> None:
    error = {"error": {"message": "engine overloaded", "type": "ServiceUnavailable", "code": 503}}
    record, _ = await run(lambda request: httpx.Response(503, json=error))
    assert (record.error, record.status, record.error_message) == ("http_503", 503, "engine overloaded")
    assert not record.ok and record.first_token is None


async def test_error_frame_mid_stream() -> None:
    frame = b'{"error": {"message": "scripted mid-stream failure", "type": "InternalServerError"}}'
    record, _ = await run(stream_response(sse(delta(content="a"), frame)))
    assert record.error == "stream_error" and record.error_message == "scripted mid-stream failure"
    assert len(record.chunk_times) == 1


async def test_stream_without_done_is_incomplete() -> None:
    record, _ = await run(stream_response(sse(delta(content="a"), done=False)))
    assert record.error == "incomplete_stream"


async def test_garbage_is_an_invalid_response() -> None:
    record, _ = await run(stream_response(b"data: {not json\n\n"))
    assert record.error == "invalid_response"


async def test_connection_failures_are_typed() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def drop(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed connection", request=request)

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    assert (await run(refuse))[0].error == "connect_error"
    assert (await run(drop))[0].error == "connection_dropped"
    assert (await run(slow))[0].error == "timeout"


async def test_a_json_body_instead_of_a_stream_still_counts() -> None:
    body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3}}
    record, _ = await run(lambda request: httpx.Response(200, json=body))
    assert record.ok and record.first_answer is not None and record.output_tokens == 3


async def test_client_sends_the_key_over_one_connection() -> None:
    client = make_client(Target("http://127.0.0.1:9/v1", api_key="sk-test"))
    try:
        assert client.headers["Authorization"] == "Bearer sk-test"
        pool = client._transport._pool  # type: ignore[attr-defined]
        assert pool._max_connections == 1
    finally:
        await client.aclose()
    assert Target("http://x/v1/").chat_url == "http://x/v1/chat/completions"
