"""Parsing on ids: real special ids split reasoning, content and tool calls; the same text typed is text.

Also the UTF-8-safe detokenizers, stop strings and the usage counts of :class:`OutputAssembler`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from unimodel.formats.detok import ByteDetokenizer, OffsetDetokenizer
from unimodel.engines.local.output import OutputAssembler, StopStringMatcher
from unimodel.formats.mistral_render import MistralRenderer
from unimodel.formats.registry import get_format
from unimodel.protocol.events import (
    ContentDelta,
    Event,
    Finish,
    ReasoningDelta,
    ToolCallArgsDelta,
    ToolCallStart,
    Usage,
)

MARKERS = ("[THINK]", "[/THINK]", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]")


@pytest.fixture(scope="module")
def renderer(tiny_path: Path) -> MistralRenderer:
    return MistralRenderer(tiny_path / "tekken.json")


@pytest.fixture(scope="module")
def ids(renderer: MistralRenderer) -> dict[str, int]:
    return renderer.special_ids(MARKERS + ("</s>",))


def text_ids(renderer: MistralRenderer, text: str) -> list[int]:
    tok: MistralTokenizer = renderer.tokenizer
    return list(tok.instruct_tokenizer.tokenizer.encode(text, bos=False, eos=False))


def run(renderer: MistralRenderer, ids: dict[str, int], tokens: list[int], reason: str = "stop",
        stops: tuple[str, ...] = ()) -> tuple[list[Event], OutputAssembler]:
    markers = {k: v for k, v in ids.items() if k in MARKERS}
    out = OutputAssembler(get_format("mistral").new_parser(special_ids=markers), renderer.new_detokenizer(),
                          prompt_tokens=7, marker_ids=markers.values(), end_ids={ids["</s>"]}, stop_strings=stops)
    events: list[Event] = []
    for t in tokens:
        events += out.feed(t)
        if out.stopped:
            break
    events += out.finish(reason)  # type: ignore[arg-type]
    return events, out


def fold(events: list[Event]) -> dict[str, object]:
    calls: dict[int, dict[str, str]] = {}
    for e in events:
        if isinstance(e, ToolCallStart):
            calls[e.index] = {"name": e.name, "arguments": ""}
        elif isinstance(e, ToolCallArgsDelta):
            calls[e.index]["arguments"] += e.text
    return {
        "reasoning": "".join(e.text for e in events if isinstance(e, ReasoningDelta)),
        "content": "".join(e.text for e in events if isinstance(e, ContentDelta)),
        "calls": [calls[i] for i in sorted(calls)],
        "usage": next(e for e in events if isinstance(e, Usage)),
        "finish": events[-1],
    }


def test_real_ids_give_reasoning_and_content(renderer: MistralRenderer, ids: dict[str, int]) -> None:
    thought, answer = text_ids(renderer, "Let me think: 2+2."), text_ids(renderer, "It is 4. Ünïcödé 🎉")
    tokens = [ids["[THINK]"], *thought, ids["[/THINK]"], *answer, ids["</s>"]]
    events, _ = run(renderer, ids, tokens)
    folded = fold(events)
    assert folded["reasoning"] == "Let me think: 2+2."
    assert folded["content"] == "It is 4. Ünïcödé 🎉"
    # thinking tokens, markers not counted; no prefix cache: no cached prompt token
    assert folded["usage"] == Usage(7, len(tokens), len(thought), cached_tokens=0)
    assert folded["finish"] == Finish("stop")
    assert isinstance(events[-2], Usage)


def test_real_ids_give_tool_calls(renderer: MistralRenderer, ids: dict[str, int]) -> None:
    args = json.dumps({"city": "Paris", "note": "[ARGS] inside"})
    tokens = [ids["[THINK]"], *text_ids(renderer, "need weather"), ids["[/THINK]"],
              ids["[TOOL_CALLS]"], *text_ids(renderer, "get_weather"), ids["[ARGS]"], *text_ids(renderer, args),
              ids["[TOOL_CALLS]"], *text_ids(renderer, "get_time"), ids["[ARGS]"], *text_ids(renderer, "{}"),
              ids["</s>"]]
    folded = fold(run(renderer, ids, tokens)[0])
    assert folded["reasoning"] == "need weather" and folded["content"] == ""
    assert folded["calls"] == [{"name": "get_weather", "arguments": args}, {"name": "get_time", "arguments": "{}"}]
    assert folded["finish"] == Finish("tool_calls")


def test_typed_marker_text_stays_text(renderer: MistralRenderer, ids: dict[str, int]) -> None:
    typed = '[THINK]not thinking[/THINK][TOOL_CALLS]f[ARGS]{"a": 1}'
    tokens = text_ids(renderer, typed)
    assert not set(tokens) & set(ids.values())
    folded = fold(run(renderer, ids, tokens + [ids["</s>"]])[0])
    assert folded["content"] == typed and folded["reasoning"] == "" and folded["calls"] == []
    assert folded["finish"] == Finish("stop")


def test_stop_string_cuts_and_counts(renderer: MistralRenderer, ids: dict[str, int]) -> None:
    tokens = text_ids(renderer, "alpha beta STOP gamma delta")
    events, out = run(renderer, ids, tokens, stops=("STOP",))
    folded = fold(events)
    assert folded["content"] == "alpha beta " and folded["finish"] == Finish("stop")
    assert out.completion_tokens < len(tokens)


def test_length_finish_keeps_reason(renderer: MistralRenderer, ids: dict[str, int]) -> None:
    folded = fold(run(renderer, ids, text_ids(renderer, "cut here"), reason="length")[0])
    assert folded["content"] == "cut here" and folded["finish"] == Finish("length")


def test_byte_detokenizer_never_splits_a_character() -> None:
    data = "é🎉x".encode()
    pieces = {i: data[i:i + 1] for i in range(len(data))}  # one byte per "token"
    detok = ByteDetokenizer(lambda i: pieces[i], special_ids={99})
    out = [detok.push(i) for i in range(len(data))]
    assert out == ["", "é", "", "", "", "🎉", "x"]
    assert detok.push(99) == "" and detok.flush() == ""


def test_offset_detokenizer_waits_for_whole_characters() -> None:
    vocab = {1: b"a", 2: "🎉".encode()[:2], 3: "🎉".encode()[2:], 4: b" b"}

    def decode(tokens: list[int]) -> str:
        return b"".join(vocab[t] for t in tokens).decode("utf-8", errors="replace")

    detok = OffsetDetokenizer(decode, special_ids=set())
    assert [detok.push(t) for t in (1, 2, 3, 4)] == ["a", "", "🎉", " b"]


def test_stop_matcher_holds_back_only_prefixes() -> None:
    m = StopStringMatcher(["END"])
    assert m.push("abc E") == "abc " and m.push("N") == "" and m.push("x") == "ENx"
    assert m.push("..EN") == ".." and m.push("D tail") == "" and m.stopped
