"""Rendering: the ids we feed the model equal what mistral_common produces for the same request.

Each case gives the OpenAI wire messages a client sends and the same conversation built by hand from
mistral_common's own classes; the renderer's ids must equal mistral_common's, for every effort.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
from mistral_common.protocol.instruct.chunk import ImageChunk, TextChunk, ThinkChunk
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, ToolMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest as MistralRequest
from mistral_common.protocol.instruct.tool_calls import Function, FunctionCall, Tool, ToolCall
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from PIL import Image

from unimodel.engines.base import GenerationRequest
from tests.support.requests import gen_request as build_request
from unimodel.formats.mistral_render import MistralRenderer
from unimodel.errors import InvalidRequestError, UnsupportedFeatureError
from unimodel.models import ensure_tiny_random
from unimodel.protocol.openai import ChatCompletionRequest

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WIRE_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                                 "parameters": WEATHER}}]
MC_TOOLS = [Tool(function=Function(name="get_weather", description="Weather now", parameters=WEATHER))]
CALL_ARGS = '{"city": "Paris"}'


def png_data_uri(color: str = "red", size: tuple[int, int] = (40, 24)) -> tuple[str, Image.Image]:
    buf = io.BytesIO()
    Image.new("RGB", size, color=color).save(buf, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    buf.seek(0)
    return uri, Image.open(buf)


# (id, wire messages, mistral_common messages, uses tools)
CASES: list[tuple[str, list[dict[str, Any]], list[Any], bool]] = [
    ("user", [{"role": "user", "content": "Hello there"}], [UserMessage(content="Hello there")], False),
    ("system", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
     [SystemMessage(content="Be brief."), UserMessage(content="Hi")], False),
    ("developer-is-system", [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
     [SystemMessage(content="Be brief."), UserMessage(content="Hi")], False),
    ("text-parts", [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
     [UserMessage(content=[TextChunk(text="a"), TextChunk(text="b")])], False),
    ("multi-turn",
     [{"role": "system", "content": "S"}, {"role": "user", "content": "one"},
      {"role": "assistant", "content": "uno"}, {"role": "user", "content": "two"}],
     [SystemMessage(content="S"), UserMessage(content="one"), AssistantMessage(content="uno"),
      UserMessage(content="two")], False),
    ("earlier-thinking",
     [{"role": "user", "content": "2+2?"},
      {"role": "assistant", "content": "4", "reasoning": "Two and two make four."},
      {"role": "user", "content": "and 3+3?"}],
     [UserMessage(content="2+2?"),
      AssistantMessage(content=[ThinkChunk(thinking="Two and two make four."), TextChunk(text="4")]),
      UserMessage(content="and 3+3?")], False),
    ("earlier-thinking-content-field",
     [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning_content": "hmm"},
      {"role": "user", "content": "q2"}],
     [UserMessage(content="q"), AssistantMessage(content=[ThinkChunk(thinking="hmm"), TextChunk(text="a")]),
      UserMessage(content="q2")], False),
    ("tools", [{"role": "user", "content": "Weather in Paris?"}], [UserMessage(content="Weather in Paris?")], True),
    ("tool-results",
     [{"role": "system", "content": "S"}, {"role": "user", "content": "Weather in Paris?"},
      {"role": "assistant", "reasoning": "I should call the tool.", "tool_calls": [
          {"id": "abcdefghi", "type": "function", "function": {"name": "get_weather", "arguments": CALL_ARGS}}]},
      {"role": "tool", "tool_call_id": "abcdefghi", "content": "sunny, 21 C"}],
     [SystemMessage(content="S"), UserMessage(content="Weather in Paris?"),
      AssistantMessage(content=[ThinkChunk(thinking="I should call the tool.")], tool_calls=[
          ToolCall(id="abcdefghi", function=FunctionCall(name="get_weather", arguments=CALL_ARGS))]),
      ToolMessage(tool_call_id="abcdefghi", content="sunny, 21 C")], True),
]


@pytest.fixture(scope="module")
def renderer(tiny_path: Path) -> MistralRenderer:
    return MistralRenderer(tiny_path / "tekken.json")


def gen_request(messages: list[dict[str, Any]], effort: str | None, tools: bool = False) -> GenerationRequest:
    wire = ChatCompletionRequest(model="m", messages=messages, tools=WIRE_TOOLS if tools else None)
    return build_request("r", "m", wire, None, model_effort=effort)  # type: ignore[arg-type]


@pytest.mark.parametrize("effort", [None, "none", "high"])
@pytest.mark.parametrize(("wire", "mc", "tools"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_ids_equal_mistral_common(renderer: MistralRenderer, wire: list[dict[str, Any]], mc: list[Any],
                                  tools: bool, effort: str | None) -> None:
    ours = renderer.render(gen_request(wire, effort, tools))
    expected = renderer.tokenizer.encode_chat_completion(
        MistralRequest(messages=mc, tools=MC_TOOLS if tools else None, reasoning_effort=effort))
    assert ours.token_ids == expected.tokens
    assert ours.images == []


def test_effort_reaches_model_settings(renderer: MistralRenderer) -> None:
    high = renderer.render(gen_request([{"role": "user", "content": "x"}], "high")).token_ids
    none = renderer.render(gen_request([{"role": "user", "content": "x"}], "none")).token_ids
    settings = renderer.tokenizer.instruct_tokenizer.tokenizer.get_special_token("[MODEL_SETTINGS]")
    assert settings in high and high != none


def test_images_equal_mistral_common(tiny_cache_dir: Path) -> None:
    renderer = MistralRenderer(ensure_tiny_random("tiny-random-vision", tiny_cache_dir) / "tekken.json")
    uri, image = png_data_uri()
    wire = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                         {"type": "image_url", "image_url": {"url": uri}}]}]
    ours = renderer.render(gen_request(wire, "none"), {uri: image})
    tok: MistralTokenizer = renderer.tokenizer
    expected = tok.encode_chat_completion(MistralRequest(
        messages=[UserMessage(content=[TextChunk(text="What is this?"), ImageChunk(image=image)])],
        reasoning_effort="none"))
    assert ours.token_ids == expected.tokens
    assert len(ours.images) == 1 and (ours.images[0] == expected.images[0]).all()
    assert tok.instruct_tokenizer.tokenizer.get_special_token("[IMG]") in ours.token_ids


def test_text_only_tokenizer_refuses_images(renderer: MistralRenderer) -> None:
    uri, _ = png_data_uri()
    wire = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": uri}}]}]
    with pytest.raises(UnsupportedFeatureError) as err:
        renderer.render(gen_request(wire, None))
    assert err.value.param == "messages"


def test_invalid_conversation_is_a_400(renderer: MistralRenderer) -> None:
    wire = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a",
                                               "reasoning": "x", "reasoning_content": "y"}]
    with pytest.raises(InvalidRequestError) as err:
        renderer.render(gen_request(wire, None))
    assert err.value.param == "messages"
