"""The Messages shape without a server: Anthropic's request into the chat request (every mapping, every
refusal), the chat completion into a Message, the neutral events into Anthropic's event stream (read back by
the official SDK's own accumulator), and the error bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from unimodel import errors
from unimodel.errors import InvalidRequestError, UnimodelError
from unimodel.protocol.events import (
    ContentDelta,
    Event,
    Finish,
    ReasoningDelta,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from unimodel.protocol.openai import MAX_STOP_SEQUENCES, MAX_TOOLS, ChatCompletionRequest
from unimodel.shapes.messages import MESSAGES, MessagesShape
from unimodel.shapes.messages.convert import SIGNATURE, message_body
from unimodel.shapes.messages.stream import MessagesStreamWriter

BASE: dict[str, Any] = {"model": "m", "max_tokens": 100}
WEATHER = {"name": "get_weather", "description": "The weather.", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"}}}}
PNG_B64 = "iVBORw0KGgo="


async def chat(**body: Any) -> ChatCompletionRequest:
    return await MESSAGES.to_chat({**BASE, **body}, None)


async def refused(**body: Any) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        await MESSAGES.to_chat({**BASE, **body}, None)
    return info.value


def dumped(request: ChatCompletionRequest) -> list[dict[str, Any]]:
    return [m.model_dump(exclude_none=True) for m in request.messages]


# ---- request ----------------------------------------------------------------------------------------------


async def test_a_plain_request_maps_field_by_field() -> None:
    req = await chat(messages=[{"role": "user", "content": "Hi"}], system="Be brief.", stop_sequences=["END"],
                     temperature=0.5, top_p=0.9, top_k=40, metadata={"user_id": "u-1"}, service_tier="auto",
                     unknown_field={"x": 1})
    assert dumped(req) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert (req.max_tokens, req.stop, req.temperature, req.top_p, req.top_k, req.user) == (
        100, ["END"], 0.5, 0.9, 40, "u-1")
    assert req.include_reasoning is True and req.stream is False and req.stream_options is None
    assert req.reasoning_effort is None and req.thinking_budget is None  # the server's default effort
    assert not req.model_extra  # unknown Anthropic fields are ignored, never forwarded


async def test_stream_asks_for_the_usage() -> None:
    req = await chat(messages=[{"role": "user", "content": "Hi"}], stream=True)
    assert req.stream and req.wants_usage_in_stream


async def test_system_blocks_are_joined_and_claude_codes_billing_header_dropped() -> None:
    req = await chat(messages=[{"role": "user", "content": "Hi"}], system=[
        {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1; cch=abc123;"},
        {"type": "text", "text": "You are a helper.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Answer briefly."}])
    assert dumped(req)[0] == {"role": "system", "content": "You are a helper.\n\nAnswer briefly."}


async def test_tool_use_and_tool_results_become_calls_and_tool_messages() -> None:
    req = await chat(tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Paris and Lyon?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "Two calls.", "signature": "anything"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Lyon"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
             "content": [{"type": "text", "text": "no station"}, {"type": "tool_reference", "tool_name": "x"},
                         {"type": "text", "text": "try later"}]},
            {"type": "text", "text": "Summarise."}]}])
    assert dumped(req)[1:] == [
        {"role": "assistant", "content": "Checking.", "reasoning_content": "Two calls.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather",
                                                                "arguments": '{"city": "Paris"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "get_weather",
                                                                "arguments": '{"city": "Lyon"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: no station\ntry later"},
        {"role": "user", "content": "Summarise."}]
    assert req.tools is not None and req.tools[0].function.name == "get_weather"
    assert req.tools[0].function.parameters == WEATHER["input_schema"]
    assert req.tools[0].function.description == "The weather."


async def test_a_message_of_tool_results_only_is_tool_messages_only() -> None:
    req = await chat(tools=[WEATHER], messages=[
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]}])
    assert [m["role"] for m in dumped(req)] == ["user", "assistant", "tool"]
    assert dumped(req)[1]["content"] == "" and dumped(req)[1]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert dumped(req)[2] == {"role": "tool", "tool_call_id": "t1", "content": ""}


async def test_images_become_image_url_parts_for_the_image_stage() -> None:
    req = await chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": "Compare."},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]}])
    assert dumped(req)[0]["content"] == [
        {"type": "text", "text": "Compare."},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]
    assert req.messages[0].image_urls()[1] == "https://example.com/cat.jpg"


async def test_a_tool_results_images_follow_in_a_user_message() -> None:
    req = await chat(tools=[WEATHER], messages=[
        {"role": "user", "content": "Radar?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
            {"type": "text", "text": "radar image"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/gif", "data": "R0lG"}}]}]}])
    assert dumped(req)[2:] == [
        {"role": "tool", "tool_call_id": "t1", "content": "radar image"},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/gif;base64,R0lG"}}]}]


@pytest.mark.parametrize("thinking, output_config, effort, budget", [
    ({"type": "enabled", "budget_tokens": 2048}, None, "low", 2048),
    ({"type": "enabled", "budget_tokens": 2048, "display": "omitted"}, {"effort": "medium"}, "medium", 2048),
    ({"type": "disabled"}, None, "none", None),
    ({"type": "disabled"}, {"effort": "high"}, "none", None),
    ({"type": "adaptive"}, None, "high", None),
    ({"type": "adaptive"}, {"effort": "low"}, "low", None),
    ({"type": "between_tools"}, None, "high", None),
    (None, {"effort": "max"}, "high", None),
    (None, {"effort": "xhigh"}, "high", None),
    (None, {"effort": "medium"}, "medium", None),
])
async def test_thinking_maps_to_effort_and_budget(thinking: Any, output_config: Any, effort: str,
                                                  budget: Any) -> None:
    extra = {k: v for k, v in (("thinking", thinking), ("output_config", output_config)) if v is not None}
    req = await chat(messages=[{"role": "user", "content": "Hi"}], **extra)
    assert (req.reasoning_effort, req.thinking_budget) == (effort, budget)


@pytest.mark.parametrize("choice, chat_choice, parallel", [
    ({"type": "auto"}, "auto", None),
    ({"type": "any"}, "required", None),
    ({"type": "none"}, "none", None),
    ({"type": "auto", "disable_parallel_tool_use": True}, "auto", False),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}, None),
])
async def test_tool_choice(choice: dict[str, Any], chat_choice: Any, parallel: Any) -> None:
    req = await chat(messages=[{"role": "user", "content": "Hi"}], tools=[WEATHER], tool_choice=choice)
    got = req.tool_choice if isinstance(req.tool_choice, str) else req.tool_choice.model_dump()  # type: ignore
    assert got == chat_choice and req.parallel_tool_calls == parallel


async def test_a_final_assistant_message_is_continued_and_the_json_format_passes() -> None:
    req = await chat(messages=[{"role": "user", "content": "Say it"}, {"role": "assistant", "content": "It is"}],
                     output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}})
    assert req.continue_final_message is True
    assert req.response_format is not None and req.response_format.json_schema is not None
    assert req.response_format.json_schema.schema_ == {"type": "object"}


async def test_a_system_role_in_messages_is_accepted_as_vllm_does() -> None:
    req = await chat(messages=[{"role": "user", "content": "Hi"}, {"role": "system", "content": "Reminder."},
                               {"role": "user", "content": [{"type": "text", "text": "Go"}]}])
    assert [m["role"] for m in dumped(req)] == ["user", "system", "user"]


async def test_count_tokens_builds_the_same_prompt_without_max_tokens() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "system": "S", "tools": [WEATHER],
            "thinking": {"type": "enabled", "budget_tokens": 1024}}
    counted = MessagesShape.count_tokens_chat(body)
    sent = await MESSAGES.to_chat({**body, "max_tokens": 5}, None)
    assert dumped(counted) == dumped(sent) and counted.tools == sent.tools
    assert (counted.reasoning_effort, counted.thinking_budget) == (sent.reasoning_effort, sent.thinking_budget)


@pytest.mark.parametrize("body, param, words", [
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": None}, "max_tokens", "integer"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens", "greater than"),
    ({"messages": []}, "messages", "at least 1"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "'user'"),
    ({"messages": [{"role": "user", "content": []}]}, "messages[0].content", "at least one block"),
    ({"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
     "messages[0].content[0].document", "not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "server_tool_use"}]}]},
     "messages[0].content[0]", "server_tool_use"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]},
     "messages[0].content[0].image.source.file", "Files API"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/bmp", "data": "Qk0="}}]}]},
     "messages[0].content[0].image.source.base64.media_type", "image/png"),
    ({"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}]}]},
     "messages[0]", "'tool_use' block cannot be in a message with role 'user'"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "a"}]}]},
     "messages[0]", "'tool_result' block cannot be"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search_20250305",
                                                                 "name": "web_search", "max_uses": 5}]},
     "tools[0]", "server tools"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"name": "no schema"}]}, "tools[0]", "input_schema"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"name": "bad name", "input_schema": {}}]},
     "tools[0].name", "pattern"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER] * (MAX_TOOLS + 1)}, "tools", "at most"),
    ({"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "tool"}}, "tool_choice", "name"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [WEATHER],
      "tool_choice": {"type": "tool", "name": "other"}}, "tool_choice", "not in 'tools'"),
    ({"messages": [{"role": "user", "content": "x"}], "tool_choice": {"type": "any"}}, "tool_choice", "needs"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": 1.5}, "temperature", "less than or equal"),
    ({"messages": [{"role": "user", "content": "x"}], "stop_sequences": ["s"] * (MAX_STOP_SEQUENCES + 1)},
     "stop_sequences", "at most"),
    ({"messages": [{"role": "user", "content": "x"}], "stop_sequences": [""]}, "stop_sequences[0]", "at least"),
    ({"messages": [{"role": "user", "content": "x"}], "thinking": {"type": "enabled"}},
     "thinking.enabled.budget_tokens", "required"),
    ({"messages": [{"role": "user", "content": "x"}], "thinking": {"type": "sometimes"}}, "thinking", "sometimes"),
    ({"messages": [{"role": "user", "content": "x"}], "metadata": {"user_id": "u" * 257}}, "metadata.user_id",
     "at most"),
])
async def test_refusals_name_the_place(body: dict[str, Any], param: str, words: str) -> None:
    error = await refused(**body)
    assert error.status_code == 400 and error.param == param, (error.param, error.message)
    assert words in error.message


# ---- answer -----------------------------------------------------------------------------------------------


def completion(message: dict[str, Any], finish: str, usage: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-0123abcd", "object": "chat.completion", "created": 1, "model": "served",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
            "usage": usage or {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19},
            "unimodel_reasoning": {"effort": "low"}}


def test_the_message_body_has_anthropics_blocks_in_order() -> None:
    body = message_body(completion({
        "content": "Let me check.", "reasoning": "Hmm.", "reasoning_content": "Hmm.",
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}, "tool_calls"))
    assert body == {
        "id": "msg_0123abcd", "type": "message", "role": "assistant", "model": "served",
        "content": [{"type": "thinking", "thinking": "Hmm.", "signature": SIGNATURE},
                    {"type": "text", "text": "Let me check."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 12, "output_tokens": 7, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0}}


@pytest.mark.parametrize("finish, calls, reason", [
    ("stop", False, "end_turn"), ("length", False, "max_tokens"), ("tool_calls", True, "tool_use"),
    ("stop", True, "tool_use"), ("length", True, "max_tokens"), ("content_filter", False, "refusal")])
def test_stop_reasons(finish: str, calls: bool, reason: str) -> None:
    message: dict[str, Any] = {"content": "x"}
    if calls:
        message["tool_calls"] = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    assert message_body(completion(message, finish))["stop_reason"] == reason


def test_an_empty_answer_is_one_empty_text_block_and_cut_arguments_are_an_empty_input() -> None:
    assert message_body(completion({"content": ""}, "length"))["content"] == [{"type": "text", "text": ""}]
    body = message_body(completion({"content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"city": "Pa'}}]}, "length"))
    assert body["content"] == [{"type": "tool_use", "id": "c", "name": "f", "input": {}}]
    assert body["stop_reason"] == "max_tokens"


def test_cached_prompt_tokens_are_reported_apart() -> None:
    body = message_body(completion({"content": "x"}, "stop", {
        "prompt_tokens": 100, "completion_tokens": 3, "total_tokens": 103,
        "prompt_tokens_details": {"cached_tokens": 64}}))
    assert body["usage"] == {"input_tokens": 36, "output_tokens": 3, "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 64}


# ---- stream -----------------------------------------------------------------------------------------------


def frames(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for chunk in data.decode().split("\n\n"):
        if not chunk:
            continue
        event, payload = chunk.split("\n")
        assert event.startswith("event: ") and payload.startswith("data: ")
        body = json.loads(payload[6:])
        assert body["type"] == event[7:]  # every frame's event name is its payload's type
        out.append((event[7:], body))
    return out


def run(writes: list[list[Event]], error: UnimodelError | None = None) -> bytes:
    writer = MessagesStreamWriter("msg_1", "served", MESSAGES.error_body)
    data = writer.opening(writes[0])
    for events in writes[1:-1]:
        data += writer.write(events)
    return data + writer.closing(writes[-1] if len(writes) > 1 else [], error)


def accumulate(data: bytes) -> Any:
    """The Message the official SDK's ``messages.stream()`` builds from these frames, by its own accumulator (a
    module of the SDK's that is not public: the integration test reads the same through the public API)."""
    try:
        from anthropic.lib.streaming._messages import accumulate_event
    except ImportError:  # pragma: no cover - a release that moved it
        pytest.skip("this anthropic release keeps its stream accumulator elsewhere")
    snapshot = None
    bufs: dict[int, bytes] = {}
    for name, body in frames(data):
        if name not in ("ping", "error"):
            snapshot = accumulate_event(event=body, current_snapshot=snapshot, json_bufs=bufs)  # type: ignore[arg-type]
    return snapshot


def test_the_stream_follows_anthropics_grammar() -> None:
    data = run([[ReasoningDelta("Hmm")], [ReasoningDelta(", ok."), ContentDelta("Let me check.")],
                [ToolCallStart(0, "call_1", "get_weather"), ToolCallArgsDelta(0, '{"city": '),
                 ToolCallArgsDelta(0, '"Paris"}'), ToolCallEnd(0), ToolCallStart(1, "call_2", "get_time")],
                [ToolCallArgsDelta(1, "{}"), ToolCallEnd(1), Usage(12, 9, 4), Finish("tool_calls")]])
    got = frames(data)
    assert [(name, body.get("index"), (body.get("delta") or body.get("content_block") or {}).get("type"))
            for name, body in got] == [
        ("message_start", None, None), ("ping", None, None),
        ("content_block_start", 0, "thinking"), ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "thinking_delta"), ("content_block_delta", 0, "signature_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, "text"), ("content_block_delta", 1, "text_delta"),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"), ("content_block_delta", 2, "input_json_delta"),
        ("content_block_delta", 2, "input_json_delta"), ("content_block_stop", 2, None),
        ("content_block_start", 3, "tool_use"), ("content_block_delta", 3, "input_json_delta"),
        ("content_block_stop", 3, None),
        ("message_delta", None, None), ("message_stop", None, None)]
    start = got[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["role"] == "assistant"
    assert got[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert got[-2][1]["usage"]["output_tokens"] == 9 and got[-2][1]["usage"]["input_tokens"] == 12

    message = accumulate(data)  # what the SDK's messages.stream() gives: the same Message as message_body's
    whole = message_body(completion({
        "content": "Let me check.", "reasoning_content": "Hmm, ok.",
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                       {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
        "tool_calls", {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21}))
    assert message.model_dump(exclude={"id", "stop_details"}, exclude_none=True) == {
        k: v for k, v in whole.items() if k != "id" and v is not None}


def test_a_plain_answer_streams_one_text_block() -> None:
    message = accumulate(run([[ContentDelta("Hello")], [ContentDelta(" there"), Usage(3, 2), Finish("length")]]))
    assert [b.to_dict() for b in message.content] == [{"type": "text", "text": "Hello there"}]
    assert message.stop_reason == "max_tokens" and message.usage.input_tokens == 3


def test_a_failure_mid_stream_ends_with_an_error_frame() -> None:
    got = frames(run([[ContentDelta("Hel")], [ContentDelta("lo")]],
                     error=errors.UpstreamError("the upstream went away")))
    assert got[-1] == ("error", {"type": "error", "error": {"type": "api_error",
                                                            "message": "the upstream went away"}})
    assert "message_stop" not in [name for name, _ in got] and "message_delta" not in [name for name, _ in got]


def test_hidden_reasoning_writes_no_thinking_block() -> None:
    writer = MessagesStreamWriter("msg_1", "served", MESSAGES.error_body, include_reasoning=False)
    data = writer.opening([ReasoningDelta("secret")]) + writer.closing([ContentDelta("Hi"), Finish("stop")], None)
    assert b"secret" not in data and [b.type for b in accumulate(data).content] == ["text"]


# ---- errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("error, kind", [
    (errors.InvalidRequestError("bad"), "invalid_request_error"),
    (errors.ContextLengthExceededError("long"), "invalid_request_error"),
    (errors.AuthenticationError("who"), "authentication_error"),
    (errors.PermissionDeniedError("no"), "permission_error"),
    (errors.ModelNotFoundError("model"), "not_found_error"),
    (errors.IdempotencyKeyReusedError("again"), "conflict_error"),
    (errors.RequestTooLargeError("big"), "request_too_large"),
    (errors.UnsupportedMediaTypeError("json"), "invalid_request_error"),
    (errors.RateLimitError("slow"), "rate_limit_error"),
    (errors.UnimodelError("oops"), "api_error"),
    (errors.UpstreamError("gone"), "api_error"),
    (errors.UpstreamTimeoutError("late"), "timeout_error"),
    (errors.OverloadedError("full"), "overloaded_error"),
    (errors.ServiceUnavailableError("starting"), "overloaded_error"),
    (errors.UnimodelError("teapot", status_code=418), "invalid_request_error"),
])
def test_error_bodies_have_anthropics_types(error: UnimodelError, kind: str) -> None:
    assert MESSAGES.error_body(error) == {"type": "error", "error": {"type": kind, "message": error.message}}
