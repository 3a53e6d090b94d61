"""The Responses shape's translations: a Responses request into the one chat request (and a client's mistake into a
400 naming the place), and the neutral events into a Response object and OpenAI's event stream, each read back
with the openai SDK's own models (strict pydantic validation, not the SDK's lenient construction)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from unimodel.errors import InvalidRequestError, RateLimitError, UnimodelError, UpstreamTimeoutError
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
from unimodel.protocol.openai import ChatCompletionRequest
from unimodel.protocol.responses import ResponsesRequest
from unimodel.service.assemble import CompletionBuilder
from unimodel.service.context import RequestContext
from unimodel.service.pipeline import Call
from unimodel.shapes.responses.convert import ResponseFrame, chat_payload, frame_for, response_from_completion
from unimodel.shapes.responses.shape import RESPONSES_REQUEST, ResponsesShape
from unimodel.shapes.responses.stream import ResponsesStreamWriter

EVENTS = TypeAdapter(ResponseStreamEvent)
TOOL = {"type": "function", "name": "get_weather", "description": "the weather", "strict": True,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
COMPLETION_ID = "chatcmpl-" + "ab" * 16


def _call() -> Call:
    async def body() -> bytes:
        return b""

    return Call(RequestContext("ab" * 16), {}, body)


def to_chat(data: dict[str, Any], shape: ResponsesShape = ResponsesShape()) -> ChatCompletionRequest:
    return asyncio.run(shape.to_chat(data, _call()))


def refusal(data: dict[str, Any]) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        to_chat({"model": "m", **data})
    assert info.value.status_code == 400
    return info.value


def messages(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [m.model_dump(exclude_none=True) for m in to_chat({"model": "m", **data}).messages]


# ---- request → chat ------------------------------------------------------------------------------------


def test_a_string_input_with_instructions_is_a_system_then_a_user_message() -> None:
    chat = to_chat({"model": "m", "input": "Hello", "instructions": "Be brief.", "max_output_tokens": 50,
                    "temperature": 0.2, "top_p": 0.9, "user": "u1", "seed": 7, "route": "fast"})
    assert [m.model_dump(exclude_none=True) for m in chat.messages] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert (chat.max_completion_tokens, chat.temperature, chat.top_p, chat.user, chat.seed, chat.route) == (
        50, 0.2, 0.9, "u1", 7, "fast")
    assert chat.include_reasoning is None and chat.stream is False and chat.stream_options is None  # the policy's


def test_a_stream_asks_for_usage_and_safety_identifier_stands_in_for_user() -> None:
    chat = to_chat({"model": "m", "input": "x", "stream": True, "safety_identifier": "hashed-user"})
    assert chat.stream and chat.wants_usage_in_stream and chat.user == "hashed-user"


def test_message_items_keep_their_roles_and_parts() -> None:
    out = messages({"input": [
        {"type": "message", "role": "developer", "content": "Rules."},
        {"role": "user", "content": [{"type": "input_text", "text": "What is "},
                                     {"type": "input_image", "image_url": "data:image/png;base64,AAAA",
                                      "detail": "low"},
                                     {"type": "input_image", "image_url": "https://example.com/a.png",
                                      "detail": "original"}]},
        {"type": "message", "role": "assistant", "status": "completed", "id": "msg_1",
         "content": [{"type": "output_text", "text": "A cat", "annotations": [], "logprobs": []},
                     {"type": "refusal", "refusal": " (no more)"}]},
    ]})
    assert out == [
        {"role": "developer", "content": "Rules."},
        {"role": "user", "content": [{"type": "text", "text": "What is "},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA",
                                                                         "detail": "low"}},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]},
        {"role": "assistant", "content": "A cat (no more)"},
    ]


def test_function_calls_merge_into_one_assistant_turn_with_its_text_and_reasoning() -> None:
    out = messages({"input": [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "Two calls."}]},
        {"role": "assistant", "content": "Checking."},
        {"type": "function_call", "id": "fc_1", "call_id": "call_a", "name": "get_weather",
         "arguments": '{"city": "Paris"}', "status": "completed"},
        {"type": "function_call", "call_id": "call_b", "name": "get_weather", "arguments": '{"city": "Rome"}'},
        {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_b",
         "output": [{"type": "input_text", "text": "rain"}]},
        {"type": "reasoning", "id": "rs_2", "summary": [{"type": "summary_text", "text": "Both known."}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Sunny, rain."}]},
        {"role": "user", "content": "Thanks"},
    ]})
    assert out == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "reasoning_content": "Two calls.", "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "rain"}]},
        {"role": "assistant", "content": "Sunny, rain.", "reasoning_content": "Both known."},
        {"role": "user", "content": "Thanks"},
    ]


def test_reasoning_that_precedes_no_answer_is_left_out() -> None:
    out = messages({"input": [{"type": "reasoning", "summary": [{"type": "summary_text", "text": "lost"}]},
                              {"role": "user", "content": "hi"},
                              {"type": "reasoning", "encrypted_content": "sealed", "summary": []}]})
    assert out == [{"role": "user", "content": "hi"}]


def test_tools_tool_choice_text_format_and_effort_map_onto_chat() -> None:
    chat = to_chat({"model": "m", "input": "x", "tools": [TOOL], "tool_choice": {"type": "function",
                                                                               "name": "get_weather"},
                    "parallel_tool_calls": False, "reasoning": {"effort": "xhigh", "summary": "auto"},
                    "text": {"format": {"type": "json_schema", "name": "city", "strict": True,
                                        "schema": {"type": "object"}}, "verbosity": "low"}})
    dumped = chat.model_dump(exclude_none=True, by_alias=True)
    assert dumped["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "the weather", "strict": True, "parameters": TOOL["parameters"]}}]
    assert dumped["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert dumped["parallel_tool_calls"] is False and dumped["reasoning_effort"] == "high"
    assert dumped["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "city", "strict": True, "schema": {"type": "object"}}}
    assert to_chat({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}
                   ).response_format.type == "json_object"  # type: ignore[union-attr]
    assert to_chat({"model": "m", "input": "x", "text": {"format": {"type": "text"}}}).response_format is None
    for effort in ("none", "minimal", "low", "medium", "high"):
        assert to_chat({"model": "m", "input": "x", "reasoning": {"effort": effort}}).reasoning_effort == effort


def test_unknown_fields_and_accepted_no_ops_are_ignored() -> None:
    chat = to_chat({"model": "m", "input": "x", "store": True, "include": ["reasoning.encrypted_content"],
                    "truncation": "auto", "service_tier": "flex", "metadata": {"k": "v"}, "top_logprobs": 0,
                    "prompt_cache_key": "p", "max_tool_calls": 3, "some_future_field": {"a": 1}})
    assert chat.model_extra == {}


@pytest.mark.parametrize(("data", "param", "words"), [
    ({"input": "x", "tools": [{"type": "custom", "name": "c"}]}, "tools[0]",
     "tools of type 'custom' are not supported"),
    ({"input": "x", "tools": [TOOL, {"type": "local_shell"}]}, "tools[1]", "'local_shell'"),
    ({"input": "x", "tools": [{"type": "namespace", "name": "n" * 40, "tools": [{**TOOL, "name": "f" * 30}]}]},
     "tools[0]", "longer than 64 characters"),
    ({"input": "x", "tools": [{"type": "namespace", "name": "a", "tools": [TOOL]},
                              {"type": "namespace", "name": "b", "tools": [TOOL]}],
      "tool_choice": {"type": "function", "name": "get_weather"}}, "tool_choice", "more than one namespace"),
    ({"input": "x", "tool_choice": {"type": "file_search"}}, "tool_choice", "type 'file_search' is not supported"),
    ({"input": "x", "tools": [TOOL], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice",
     "not in 'tools'"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}],
      }, "input[0].content[0]", "file_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
     "input[0].content[0]", "input_file"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0]", "'web_search_call' are not supported"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0]", "send the item itself"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "Input should be"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id", "Field required"),
    ({"input": [{"role": "assistant", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]}, "input[0].content", "images"),
    ({"input": "x", "reasoning": {"effort": "extreme"}}, "reasoning.effort", "Input should be"),
    ({"input": "x", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "16"),
    ({"input": "x", "metadata": {"k": "v" * 513}}, "metadata", "512"),
    ({"input": "x", "top_logprobs": 5}, "top_logprobs", "not supported"),
    ({"input": "x", "conversation": "conv_1"}, "conversation", "state"),
    ({"input": "x", "previous_response_id": "resp_1"}, "previous_response_id", "response store"),
    ({"input": "x", "background": True}, "background", "response store"),
    ({"input": []}, "input", "required"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens", "greater than or equal to 1"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}, "text.format", "'schema'"),
])
def test_a_client_mistake_is_a_400_naming_the_place(data: dict[str, Any], param: str, words: str) -> None:
    error = refusal(data)
    assert error.param == param, error.message
    assert words in error.message


def test_the_parsed_request_waits_in_the_call_for_the_answer() -> None:
    call = _call()
    asyncio.run(ResponsesShape().to_chat({"model": "m", "input": "x", "metadata": {"a": "b"}}, call))
    request = call.get(RESPONSES_REQUEST)
    assert isinstance(request, ResponsesRequest) and request.metadata == {"a": "b"}


# ---- answer → Response ---------------------------------------------------------------------------------


def _frame(summary: bool = False, include_reasoning: bool = True, **request: Any) -> ResponseFrame:
    parsed = ResponsesRequest.model_validate({"model": "m", "input": "x", "tools": [TOOL], "metadata": {"a": "b"},
                                              "instructions": "Be brief.", **request,
                                              **({"reasoning": {"summary": "auto"}} if summary else {})})
    return frame_for(COMPLETION_ID, 1700000000, "served", parsed, "high", store=False,
                     include_reasoning=include_reasoning)


def _completion(events: list[Event], include_reasoning: bool = True) -> dict[str, Any]:
    return CompletionBuilder(include_reasoning).add_all(events).completion(
        COMPLETION_ID, "served", 1700000000).model_dump(mode="json")


def _stream(events: list[Event], frame: ResponseFrame, error: UnimodelError | None = None,
            splits: int = 2) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    writer = ResponsesStreamWriter(frame)
    data = writer.opening(events[:1]) + writer.write(events[1:splits]) + writer.closing(events[splits:], error)
    frames = []
    for block in data.decode().split("\n\n")[:-1]:
        head, body = block.split("\n")
        payload = json.loads(body.removeprefix("data: "))
        assert head == "event: " + payload["type"]
        EVENTS.validate_python(payload)  # every event as the SDK's model defines it, strictly
        frames.append(payload)
    assert data.endswith(b"\n\n")
    assert [f["sequence_number"] for f in frames] == list(range(len(frames)))
    result = writer.result()
    assert result is not None
    return frames, result


THINK_TOOL = [ReasoningDelta("Let me "), ReasoningDelta("think."), ContentDelta("Checking."),
              ToolCallStart(0, "call_1", "get_weather"), ToolCallArgsDelta(0, '{"city": '),
              ToolCallArgsDelta(0, '"Paris"}'), ToolCallEnd(0), Usage(20, 12, 5, cached_tokens=8),
              Finish("tool_calls")]


def _without_times(response: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in response.items() if k != "completed_at"}


def test_the_body_is_a_response_the_sdk_validates() -> None:
    body = response_from_completion(_frame(), _completion(THINK_TOOL))
    parsed = Response.model_validate(body)
    assert parsed.id == "resp_" + "ab" * 16 and parsed.status == "completed" and parsed.model == "served"
    assert [(i.type, i.id) for i in parsed.output] == [("reasoning", "rs_" + "ab" * 16 + "_0"),
                                                       ("message", "msg_" + "ab" * 16 + "_1"),
                                                       ("function_call", "fc_" + "ab" * 16 + "_2")]
    reasoning, message, call = parsed.output
    assert reasoning.content[0].text == "Let me think." and reasoning.summary == []  # type: ignore[union-attr]
    assert parsed.output_text == "Checking."
    assert (call.call_id, call.name, call.arguments) == ("call_1", "get_weather", '{"city": "Paris"}')  # type: ignore[union-attr]
    assert parsed.usage is not None and parsed.usage.model_dump(exclude_none=True) == {
        "input_tokens": 20, "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 0},
        "output_tokens": 12, "output_tokens_details": {"reasoning_tokens": 5}, "total_tokens": 32}
    assert parsed.instructions == "Be brief." and parsed.metadata == {"a": "b"} and parsed.store is False
    assert parsed.tools[0].name == "get_weather" and parsed.tool_choice == "auto"  # type: ignore[union-attr]
    assert parsed.parallel_tool_calls is True and parsed.reasoning.effort == "high"  # type: ignore[union-attr]
    assert parsed.error is None and parsed.incomplete_details is None


def test_the_stream_ends_with_the_response_the_body_gives() -> None:
    frames, final = _stream(THINK_TOOL, _frame())
    assert [f["type"] for f in frames] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.delta", "response.reasoning_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    assert frames[0]["response"]["status"] == "in_progress" and frames[0]["response"]["output"] == []
    assert frames[-1]["response"] == final
    assert _without_times(final) == _without_times(response_from_completion(_frame(), _completion(THINK_TOOL)))
    ids = {f["item"]["id"] for f in frames if f["type"].startswith("response.output_item.")}
    assert ids == {item["id"] for item in final["output"]}
    assert {f["item_id"] for f in frames if "item_id" in f} == ids


def test_a_summary_asked_for_carries_the_reasoning_as_the_summary() -> None:
    events = [ReasoningDelta("Because."), ContentDelta("Yes."), Finish("stop")]
    frames, final = _stream(events, _frame(summary=True))
    kinds = [f["type"] for f in frames]
    assert "response.reasoning_summary_text.delta" in kinds and "response.reasoning_text.delta" not in kinds
    assert kinds[2:7] == ["response.output_item.added", "response.reasoning_summary_part.added",
                          "response.reasoning_summary_text.delta", "response.reasoning_summary_text.done",
                          "response.reasoning_summary_part.done"]
    assert final["output"][0]["summary"] == [{"type": "summary_text", "text": "Because."}]
    assert _without_times(final) == _without_times(response_from_completion(_frame(summary=True),
                                                                            _completion(events)))


def test_an_answer_cut_at_max_output_tokens_is_incomplete() -> None:
    events = [ContentDelta("The answer is"), Usage(5, 3), Finish("length")]
    frames, final = _stream(events, _frame(max_output_tokens=3), splits=1)
    assert frames[-1]["type"] == "response.incomplete"
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete" and final["max_output_tokens"] == 3
    body = response_from_completion(_frame(max_output_tokens=3), _completion(events))
    assert _without_times(body) == _without_times(final)
    assert Response.model_validate(body).incomplete_details.reason == "max_output_tokens"  # type: ignore[union-attr]


@pytest.mark.parametrize(("error", "code"), [(UpstreamTimeoutError("the upstream took too long"), "server_error"),
                                              (RateLimitError("slow down"), "rate_limit_exceeded"),
                                              (UnimodelError("internal"), "server_error")])
def test_a_stream_that_breaks_midway_ends_with_response_failed(error: UnimodelError, code: str) -> None:
    frames, final = _stream([ContentDelta("Half an ans"), ContentDelta("wer")], _frame(), error=error)
    assert [f["type"] for f in frames][-4:] == ["response.output_text.done", "response.content_part.done",
                                                "response.output_item.done", "response.failed"]
    assert final["status"] == "failed" and final["error"] == {"code": code, "message": error.message}
    assert final["output"][0]["status"] == "incomplete" and final["usage"] is None


def test_items_stream_in_the_order_the_model_wrote_them() -> None:
    events = [ToolCallStart(0, "c0", "get_weather"), ToolCallArgsDelta(0, "{}"), ToolCallEnd(0),
              ToolCallStart(1, "c1", "get_time"), ToolCallArgsDelta(1, "{}"), ToolCallEnd(1),
              ContentDelta(" Done"), Finish("tool_calls")]
    frames, final = _stream(events, _frame())
    assert [(i["type"], i.get("call_id")) for i in final["output"]] == [
        ("function_call", "c0"), ("function_call", "c1"), ("message", None)]
    added = [f["output_index"] for f in frames if f["type"] == "response.output_item.added"]
    assert added == [0, 1, 2]
    done = [f["output_index"] for f in frames if f["type"] == "response.output_item.done"]
    assert done == [0, 1, 2]
    Response.model_validate(final)


def test_reasoning_the_operator_hides_is_in_neither_the_stream_nor_the_body() -> None:
    frame = _frame(include_reasoning=False)
    frames, final = _stream(THINK_TOOL, frame)
    assert not [f for f in frames if "reasoning" in f["type"]]
    assert [item["type"] for item in final["output"]] == ["message", "function_call"]
    assert _without_times(final) == _without_times(response_from_completion(frame, _completion(THINK_TOOL, False)))


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                 max_size=3), max_leaves=12)
_KEYS = st.sampled_from(["model", "input", "instructions", "tools", "tool_choice", "reasoning", "text", "metadata",
                         "max_output_tokens", "temperature", "include", "stream", "store", "top_logprobs",
                         "parallel_tool_calls", "truncation", "user", "prompt"])
_ITEM = st.fixed_dictionaries({"type": st.sampled_from(["message", "function_call", "function_call_output",
                                                        "reasoning", "nope"]) | _JSON},
                              optional={"role": st.sampled_from(["user", "assistant", "tool"]) | _JSON,
                                        "content": _JSON | st.lists(st.fixed_dictionaries(
                                            {"type": st.sampled_from(["input_text", "input_image", "output_text"])},
                                            optional={"text": _JSON, "image_url": _JSON, "file_id": _JSON})),
                                        "call_id": _JSON, "name": _JSON, "arguments": _JSON, "output": _JSON,
                                        "summary": _JSON})


@settings(max_examples=300, deadline=None)
@given(body=st.dictionaries(_KEYS, _JSON, max_size=6), items=st.lists(_ITEM, max_size=4))
def test_any_body_is_a_chat_request_or_a_400(body: dict[str, Any], items: list[Any]) -> None:
    for data in (body, {"model": "m", **body, "input": items}):
        try:
            to_chat(data)
        except InvalidRequestError as exc:
            assert exc.status_code == 400 and exc.message


def test_the_sealing_hooks_seal_the_reasoning_and_open_it_next_turn() -> None:
    """The sealer's integration plugs in here: a frame that seals puts the token in the reasoning item of the
    stream and of the body alike, and an opener turns a token sent back into the next answer's reasoning."""
    def seal(text: str) -> str:
        return "sealed:" + text[::-1]

    frame = dataclasses.replace(_frame(), seal=seal)
    _, final = _stream(THINK_TOOL, frame)
    assert final["output"][0]["encrypted_content"] == "sealed:.kniht em teL"
    assert _without_times(final) == _without_times(response_from_completion(frame, _completion(THINK_TOOL)))
    request = ResponsesRequest.model_validate({"model": "m", "input": [
        {"role": "user", "content": "hi"}, {"type": "reasoning", "summary": [], "encrypted_content": "sealed:!ih"},
        {"role": "assistant", "content": "Hello."}]})
    payload = chat_payload(request, open_sealed=lambda token: token.removeprefix("sealed:")[::-1])
    assert payload["messages"][-1] == {"role": "assistant", "content": "Hello.", "reasoning_content": "hi!"}
