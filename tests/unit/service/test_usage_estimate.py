"""The token estimate shared by the limits' reservation and the usage of a request that ended without one."""

from __future__ import annotations

from typing import Any, Optional

from unimodel.engines.base import GenerationRequest
from unimodel.protocol.openai import Message, Tool
from unimodel.service.usage_estimate import MESSAGE_TOKENS, UsageEstimator, text_bytes


def request(*messages: Any, tools: Optional[list[Any]] = None) -> GenerationRequest:
    return GenerationRequest(completion_id="c", served_model="m",
                             messages=[Message.model_validate(m) for m in messages],
                             tools=[Tool.model_validate(t) for t in tools] if tools else None)


def test_text_is_a_token_per_four_utf8_bytes_and_a_message_adds_its_markers() -> None:
    estimate = UsageEstimator()
    assert estimate.prompt_tokens(request({"role": "user", "content": "x" * 4000})) == 1000 + MESSAGE_TOKENS
    cjk = "漢" * 400  # 3 bytes a character: 300 tokens, near a real tokenizer's one a character
    assert estimate.prompt_tokens(request({"role": "user", "content": cjk})) == 300 + MESSAGE_TOKENS
    assert text_bytes("é") == 2 and text_bytes("abc") == 3


def test_parts_images_tool_calls_and_tools_count() -> None:
    estimate = UsageEstimator(image_tokens=500)
    parts = [{"type": "text", "text": "a" * 40}, {"type": "image_url", "image_url": {"url": "data:,"}},
             {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}]
    assert estimate.prompt_tokens(request({"role": "user", "content": parts})) == 10 + 1000 + MESSAGE_TOKENS
    call = {"role": "assistant", "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "a" * 39}}]}
    tool = {"type": "function", "function": {"name": "f" * 8, "description": "d" * 8, "parameters": {}}}
    assert estimate.prompt_tokens(request(call, tools=[tool])) == 10 + 4 + MESSAGE_TOKENS


def test_the_usage_of_an_abandoned_request_is_marked_estimated() -> None:
    usage = UsageEstimator().usage(request({"role": "user", "content": "x" * 40}), 100, 40)
    assert (usage.prompt_tokens, usage.completion_tokens, usage.reasoning_tokens) == (13, 25, 10)
    assert usage.estimated
