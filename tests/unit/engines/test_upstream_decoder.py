"""The upstream stream decoder on hand-written frames: both parsers at once, odd upstreams, bad streams."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from unimodel.engines.base import GenerationRequest
from tests.support.requests import gen_request
from unimodel.engines.upstream import UpstreamEngine
from unimodel.engines.upstream_stream import UpstreamStreamDecoder
from unimodel.errors import UpstreamError, UpstreamStatusError
from unimodel.formats.registry import get_format
from unimodel.protocol.events import (
    ContentDelta,
    Event,
    Finish,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from unimodel.protocol.openai import ChatCompletionRequest


def _frame(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
    return "data: " + json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra})


def _decode(lines: list[str]) -> list[Event]:
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
        "data: [DONE]",
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
    events = _decode([": keep-alive", "event: message", "",
                      "data: " + json.dumps({"choices": [{"index": 1, "delta": {"content": "other"}}]}),
                      _frame({"content": "hi"}), _frame({}, "eos")])
    assert [e for e in events if isinstance(e, ContentDelta)] == [ContentDelta("hi")]
    assert events[-1] == Finish("stop")


@pytest.mark.parametrize("lines,error", [
    (["data: {not json"], UpstreamError),
    (["data: [1]"], UpstreamError),
    ([_frame({"content": "partial"})], UpstreamError),  # ended without finish or [DONE]
    (['data: {"error": {"message": "boom", "code": 400}}'], UpstreamStatusError),
])
def test_bad_streams_raise(lines: list[str], error: type[Exception]) -> None:
    with pytest.raises(error):
        _decode(lines)


async def test_engine_payload_and_status_mapping_over_mock_transport() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "up-model", "max_model_len": 4096}]})
        seen.append(json.loads(request.content))
        return httpx.Response(422, json={"error": {"message": "bad field", "param": "top_k", "code": "x"}})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    engine = UpstreamEngine("http://up/v1", served_model_name="small4", upstream_model="up-model", client=client)
    await engine.start()
    try:
        assert engine.is_ready() and engine.models()[0].max_model_len == 4096
        wire = ChatCompletionRequest.model_validate({
            "model": "small4", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 9,
            "top_k": 5, "route": "r"})
        request = gen_request(request_id="r", served_model="small4", wire=wire, max_tokens=9)
        with pytest.raises(UpstreamStatusError) as err:
            async for _ in engine.generate(request):
                pass
        assert err.value.status_code == 422 and err.value.param == "top_k" and err.value.message == "bad field"
        sent = seen[0]
        assert sent["model"] == "up-model" and sent["max_tokens"] == 9 and "max_completion_tokens" not in sent
        assert sent["top_k"] == 5 and "route" not in sent and sent["stream"] is True
    finally:
        await engine.aclose()
        await client.aclose()
