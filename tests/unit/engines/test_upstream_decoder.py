"""The upstream stream decoder on hand-written frames: both parsers at once, odd upstreams, bad streams."""

from __future__ import annotations

import json
from typing import Any, Optional

import pytest
from aiohttp import web

from tests.support.loopback_http import http_server
from tests.support.requests import gen_request
from unimodel.engines.upstream import UpstreamEngine
from unimodel.engines.upstream_stream import UpstreamStreamDecoder
from unimodel.errors import UpstreamError, UpstreamStatusError
from unimodel.formats.registry import get_format
from unimodel.protocol.events import (
    ContentDelta,
    Event,
    Finish,
    FinishReason,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from unimodel.protocol.openai import ChatCompletionRequest


def _frame(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    return b"data: " + json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                                   **extra}).encode()


def _decode(lines: list[bytes]) -> list[Event]:
    dec = UpstreamStreamDecoder(get_format("mistral"), parse_content=True)
    out: list[Event] = []
    for ln in lines:
        out.extend(dec.sse_line(ln))
    return out + dec.close()


def test_upstream_and_gateway_tool_calls_share_one_index_space() -> None:
    events = _decode([
        _frame({"tool_calls": [{"index": 0, "id": "up-1", "function": {"name": "a", "arguments": "{}"}}]}),
        _frame({"content": '[TOOL_CALLS]b[ARGS]{"x": 1}'}),
        _frame({}, "tool_calls"),
        b"data: [DONE]",
    ])
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    assert [(s.index, s.name) for s in starts] == [(0, "a"), (1, "b")]
    assert starts[0].id == "up-1" and starts[1].id.startswith("call_")
    assert ToolCallArgsDelta(1, '{"x": 1}') in events
    assert {e.index for e in events if isinstance(e, ToolCallEnd)} == {0, 1}
    assert events[-1] == Finish("tool_calls") and isinstance(events[-2], Usage)


def test_arguments_sent_as_object_are_serialised() -> None:
    events = _decode([_frame({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": {"k": "v"}}}]}),
                      _frame({}, "stop")])
    assert ToolCallArgsDelta(0, '{"k": "v"}') in events and events[-1] == Finish("tool_calls")


def test_ignores_comments_and_other_choices_and_maps_unknown_finish() -> None:
    events = _decode([b": keep-alive", b"event: message", b"",
                      b"data: " + json.dumps({"choices": [{"index": 1, "delta": {"content": "other"}}]}).encode(),
                      _frame({"content": "hi"}), _frame({}, "eos")])
    assert [e for e in events if isinstance(e, ContentDelta)] == [ContentDelta("hi")]
    assert events[-1] == Finish("stop")


@pytest.mark.parametrize("lines,error", [
    ([b"data: {not json"], UpstreamError),
    ([b"data: [1]"], UpstreamError),
    ([b"data: \xff{"], UpstreamError),
    ([b"data: " + b"[" * 100_000], UpstreamError),  # nested past any parser's depth
    ([_frame({"content": "partial"})], UpstreamError),  # ended without finish or [DONE]
    ([b'data: {"error": {"message": "boom", "code": 400}}'], UpstreamStatusError),
])
def test_bad_streams_raise(lines: list[bytes], error: type[Exception]) -> None:
    with pytest.raises(error):
        _decode(lines)


@pytest.mark.parametrize("raw,message", [
    (b'{"choices": {"a": 1}}', "the upstream answered without choices"),
    (b'{"choices": "abc"}', "the upstream answered without choices"),
    (b'{"choices": null}', "the upstream answered without choices"),
    (b'{"choices": [1]}', "the upstream answered without choices"),
    (b'{"choices": [{"message": "hi"}]}', "the upstream answered with a message that is not an object"),
    (b"[]", "the upstream answered with JSON that is not an object"),
    (b"{not json", "the upstream answered with a body that is not JSON"),
    (b"\xff{}", "the upstream answered with a body that is not JSON"),
    (b"[" * 100_000, "the upstream answered with a body that is not JSON"),  # nested past any parser's depth
])
def test_odd_whole_bodies_are_upstream_errors(raw: bytes, message: str) -> None:
    dec = UpstreamStreamDecoder(get_format("mistral"), parse_content=True)
    with pytest.raises(UpstreamError) as err:
        dec.whole_body(raw)
    assert err.value.message == message and err.value.status_code == 502


@pytest.mark.parametrize("reason,finish", [
    (["a"], "stop"), ({"a": 1}, "stop"), (7, "stop"), ("eos", "stop"), (None, "stop"), ("length", "length")])
def test_a_finish_reason_of_any_type_ends_alike_streamed_or_whole(reason: Any, finish: FinishReason) -> None:
    frame = {"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": reason}]}
    streamed = _decode([b"data: " + json.dumps(frame).encode(), b"data: [DONE]"])
    dec = UpstreamStreamDecoder(get_format("mistral"), parse_content=True)
    whole = dec.whole_body(json.dumps({"choices": [{"message": {"content": "ok"}, "finish_reason": reason}]}).encode())
    assert streamed[-1] == whole[-1] == Finish(finish)
    assert ContentDelta("ok") in streamed and ContentDelta("ok") in whole


@pytest.mark.parametrize("line,content", [
    (b'data: {"choices": [{"index": 0, "delta": {"content": "a\\ud800b"}}]}', "a\ud800b"),  # a lone surrogate
    (b'data: {"choices": [{"index": 0, "delta": {"content": "caf\xe9"}}]}', "caf\ufffd"),  # not UTF-8
    (b'data: {"choices": [{"index": 0, "delta": {"content": "x"}}], "usage": {"prompt_tokens": NaN}}', "x"),
    (b'data:{"choices": [{"index": 0, "delta": {"content": "no space"}}]}\t ', "no space"),
])
def test_frames_orjson_refuses_read_as_before(line: bytes, content: str) -> None:
    events = _decode([line, _frame({}, "stop"), b"data: \xc2\xa0[DONE]\xc2\xa0"])
    assert [e for e in events if isinstance(e, ContentDelta)] == [ContentDelta(content)]


async def test_engine_payload_and_status_mapping_over_a_loopback_upstream() -> None:
    seen: list[dict[str, Any]] = []
    headers: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/models"):
            return web.json_response({"data": [{"id": "up-model", "max_model_len": 4096}]})
        headers.append(request.headers.get("Content-Type", ""))
        seen.append(json.loads(await request.read()))
        return web.json_response({"error": {"message": "bad field", "param": "top_k", "code": "x"}}, status=422)

    async with http_server(handle) as url:
        engine = UpstreamEngine(url, served_model_name="small4", upstream_model="up-model")
        await engine.start()
        try:
            assert engine.is_ready() and engine.models()[0].max_model_len == 4096
            wire = ChatCompletionRequest.model_validate({
                "model": "small4", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 9,
                "top_k": 5, "route": "r"})
            request = gen_request(completion_id="r", served_model="small4", wire=wire, max_tokens=9)
            with pytest.raises(UpstreamStatusError) as err:
                async for _ in engine.generate(request):
                    pass
        finally:
            await engine.aclose()
    assert err.value.status_code == 422 and err.value.param == "top_k" and err.value.message == "bad field"
    sent = seen[0]
    assert headers == ["application/json"]
    assert sent["model"] == "up-model" and sent["max_tokens"] == 9 and "max_completion_tokens" not in sent
    assert sent["top_k"] == 5 and "route" not in sent
    assert sent["stream"] is False and "stream_options" not in sent  # a plain request: one body upstream too


@pytest.mark.parametrize(("stream", "effort", "budget", "expect"), [
    (True, None, None, True), (False, None, None, False), (False, "none", None, False), (False, "high", None, True),
    (False, "high", 64, True)])
def test_the_upstream_streams_when_the_client_does_or_the_model_thinks(stream: bool, effort: Optional[str],
                                                                       budget: Optional[int], expect: bool) -> None:
    from unimodel.engines.upstream_payload import build_payload

    wire = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": stream}
    request = gen_request("r", "m", wire, thinking_budget=budget, model_effort=effort)
    payload = build_payload(request, "m")
    assert payload["stream"] is expect and ("stream_options" in payload) is expect


def test_raw_thinking_is_counted_one_token_a_frame() -> None:
    """A stock vLLM (no reasoning parser) reports no reasoning tokens: each frame of raw thinking text is one
    token (vLLM sends one a frame), brackets that might start a marker included; the markers are not thinking."""
    pieces = ["[THINK]", "Let", " me", " [", "x", "]", " think", "[/THINK]", "Done"]
    events = _decode([_frame({"content": p}) for p in pieces]
                     + [_frame({}, "stop", usage={"prompt_tokens": 3, "completion_tokens": 9})])
    (usage,) = [e for e in events if isinstance(e, Usage)]
    assert usage.reasoning_tokens == 6  # "Let", " me", " [", "x", "]", " think"


def test_vllm_error_vocabulary_becomes_openai_s() -> None:
    """vLLM sends its exception's class as the type and the status as the code; a client gets OpenAI's words,
    and a prompt over the context is context_length_exceeded (the message as vLLM wrote it)."""
    from unimodel.engines.upstream_errors import response_error

    body = json.dumps({"error": {"message": "This model's maximum context length is 1024 tokens. However, your "
                                            "prompt contains 1518 input tokens", "type": "BadRequestError",
                                 "param": "input_tokens", "code": 400}}).encode()
    err = response_error(400, {}, body)
    assert (err.status_code, err.error_type, err.code, err.param) == (
        400, "invalid_request_error", "context_length_exceeded", "messages")
    other = json.dumps({"error": {"message": "max_tokens=5000 cannot be greater than max_model_len=1024",
                                  "type": "BadRequestError", "param": "max_tokens", "code": 400}}).encode()
    err = response_error(400, {}, other)
    assert (err.error_type, err.code, err.param) == ("invalid_request_error", "upstream_error", "max_tokens")
    kept = json.dumps({"error": {"message": "no", "type": "invalid_request_error", "code": "model_not_found"}})
    err = response_error(404, {}, kept.encode())
    assert (err.status_code, err.error_type, err.code) == (404, "invalid_request_error", "model_not_found")


@pytest.mark.parametrize("mode", ["upstream", "auto", "gateway"])
def test_a_developer_message_goes_upstream_as_system(mode: str) -> None:
    """Mistral's tokenizer knows no ``developer`` role (vLLM: 400 "Unknown message role: developer")."""
    from unimodel.engines.upstream_payload import build_payload

    request = gen_request("chatcmpl-1", "m", {"model": "m", "messages": [
        {"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}]})
    payload = build_payload(request, "m", raw_output=mode != "upstream")
    assert [m["role"] for m in payload["messages"]] == ["system", "user"]
    assert payload["messages"][0]["content"] == "Be brief."
