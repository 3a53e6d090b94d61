"""Two Mistral output forms, parsed as vLLM 0.32 parses them (``vllm/parser/mistral.py``), streamed or not.

1. ``[TOOL_CALLS]name`` and nothing more (the output ends, ``</s>`` or the next ``[TOOL_CALLS]`` comes): vLLM's
   non-streamed result is a call ``name`` (stripped) with arguments ``{}`` -- also for ``name[ARGS]`` and
   nothing after it. (vLLM's own *streamed* result sends the name unstripped and no arguments at all; ours is
   the non-streamed one both ways, so a client sees the same message either way.)
2. Pre-v11 output with text between ``[TOOL_CALLS]`` and the JSON list: vLLM's ``_legacy_extract_tool_calls``
   finds the list with its regex fallback ``\\[{.*}\\]`` and drops the text before it (and after it); when the
   list holds no calls the whole section is content. Never a call named after the leading text.

Each case folds to the same message whole, char by char, in odd chunk sizes, cut in two and three everywhere,
and as token ids.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from .folding import assert_same_however_cut, feed_chunks, feed_tokens, fold, tokens
from .test_mistral import FMT, SPECIAL_IDS, _segments, msg

LIST = '[{"name": "f", "arguments": {}}]'

# (id, raw output, finish reason given, expected message)
NAME_ONLY: list[tuple[str, str, str, dict[str, Any]]] = [
    ("name-only", "[TOOL_CALLS]get_weather", "stop", msg(calls=[("call_0", "get_weather", "{}")], finish="tool_calls")),
    ("name-then-eos", "[TOOL_CALLS]get_weather</s>", "stop",
     msg(calls=[("call_0", "get_weather", "{}")], finish="tool_calls")),
    ("name-spaces-stripped", "[TOOL_CALLS] get_weather \n", "stop",
     msg(calls=[("call_0", "get_weather", "{}")], finish="tool_calls")),
    ("name-after-content", "Hi [TOOL_CALLS]get_weather", "stop",
     msg("Hi ", calls=[("call_0", "get_weather", "{}")], finish="tool_calls")),
    ("name-after-thinking", "[THINK]r[/THINK][TOOL_CALLS]get_weather", "stop",
     msg(reasoning="r", calls=[("call_0", "get_weather", "{}")], finish="tool_calls")),
    ("name-after-a-call", '[TOOL_CALLS]f{"a": 1}[TOOL_CALLS]g', "stop",
     msg(calls=[("call_0", "f", '{"a": 1}'), ("call_1", "g", "{}")], finish="tool_calls")),
    ("name-then-next-call", "[TOOL_CALLS]f[TOOL_CALLS]g[ARGS]{}", "stop",
     msg(calls=[("call_0", "f", "{}"), ("call_1", "g", "{}")], finish="tool_calls")),
    ("any-name", "[TOOL_CALLS]I cannot do that.", "stop",
     msg(calls=[("call_0", "I cannot do that.", "{}")], finish="tool_calls")),
    ("name-cut", "[TOOL_CALLS]get_wea", "length", msg(calls=[("call_0", "get_wea", "{}")], finish="length")),
    ("args-marker-then-end", "[TOOL_CALLS]f[ARGS]", "stop", msg(calls=[("call_0", "f", "{}")], finish="tool_calls")),
    ("args-marker-then-spaces-cut", "[TOOL_CALLS]f[ARGS] ", "length",
     msg(calls=[("call_0", "f", "{}")], finish="length")),
    # no name at all stays no call (vLLM: nothing for "[TOOL_CALLS]"; a call named "" for "[TOOL_CALLS]   ",
    # which no OpenAI client can use: see the module docstring of unimodel.formats.mistral)
    ("marker-only", "[TOOL_CALLS]", "stop", msg()),
    ("marker-spaces", "Ok [TOOL_CALLS]   ", "stop", msg("Ok ")),
]

LEAD_TEXT: list[tuple[str, str, str, dict[str, Any]]] = [
    ("lead-text", f"[TOOL_CALLS] Here you go: {LIST}", "stop", msg(calls=[("call_0", "f", "{}")], finish="tool_calls")),
    ("lead-text-no-space", '[TOOL_CALLS]junk [{"name": "add", "arguments":{"a": 1, "b": 2}}] trail', "stop",
     msg(calls=[("call_0", "add", '{"a": 1, "b": 2}')], finish="tool_calls")),
    ("content-lead-text-trail", 'Sure. [TOOL_CALLS] Here you go: [{"name": "f", "arguments": {"a": 1}}] bye', "stop",
     msg("Sure. ", calls=[("call_0", "f", '{"a": 1}')], finish="tool_calls")),
    ("lead-lines", f"[TOOL_CALLS] text\n{LIST}\n</s>", "stop", msg(calls=[("call_0", "f", "{}")], finish="tool_calls")),
    ("lead-two-calls", '[TOOL_CALLS] text [{"name": "f", "arguments": {}}, {"name": "g", "arguments": {"k": "}]"}}]',
     "stop", msg(calls=[("call_0", "f", "{}"), ("call_1", "g", '{"k": "}]"}')], finish="tool_calls")),
    ("lead-then-v11-call", f"[TOOL_CALLS] text {LIST}[TOOL_CALLS]g[ARGS]{{}}", "stop",
     msg(calls=[("call_0", "f", "{}"), ("call_1", "g", "{}")], finish="tool_calls")),
    # the list holds no calls: the section is content, its text included (vLLM: the text after the marker)
    ("lead-bad-json", '[TOOL_CALLS] text [{"name": "f", "arguments": {oops}}]', "stop",
     msg('text [{"name": "f", "arguments": {oops}}]')),
    ("lead-not-calls-then-calls", f'[TOOL_CALLS] a [{{"x": 1}}] b {LIST}', "stop", msg(f'a [{{"x": 1}}] b {LIST}')),
    ("lead-cut", '[TOOL_CALLS] text [{"name": "f", "argu', "length", msg('text [{"name": "f", "argu', finish="length")),
]

CASES = NAME_ONLY + LEAD_TEXT


def _chunked(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


@pytest.mark.parametrize(("text", "reason", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_same_message_whole_streamed_and_cut(text: str, reason: Any, expected: dict[str, Any]) -> None:
    assert_same_however_cut(FMT, text, reason, expected)  # whole, char by char, every 2- and 3-way cut
    for size in (2, 3, 5, 7, 11):
        assert fold(feed_chunks(FMT, _chunked(text, size), reason)) == expected, f"chunks of {size}"


@pytest.mark.parametrize(("text", "reason", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_tokens_fold_like_text(text: str, reason: Any, expected: dict[str, Any]) -> None:
    toks = tokens(_segments(text), SPECIAL_IDS)
    assert fold(feed_tokens(FMT, toks, reason, special_ids=SPECIAL_IDS)) == expected


def test_lead_text_then_list_streams_calls_when_the_list_closes() -> None:
    p = FMT.new_parser(id_factory=lambda: "call_x")
    assert p.feed_text("[TOOL_CALLS] Here you go: [") == []
    assert p.feed_text('{"name": "f", "arguments": {}}') == []
    events = p.feed_text("] thanks")
    assert [type(e).__name__ for e in events] == ["ToolCallStart", "ToolCallArgsDelta", "ToolCallEnd"]
    assert fold(events + p.finish("stop"))["tool_calls"] == [{"id": "call_x", "name": "f", "arguments": "{}"}]


@pytest.mark.parametrize("body", [" " * 60_000 + "f", "x" * 60_000, "Here " * 12_000 + LIST])
def test_name_and_lead_text_stay_linear(body: str) -> None:
    """A long name, run of spaces or leading text fed one character at a time: no rescans (was quadratic for
    spaces). The bound is generous: linear work here takes well under a second."""
    p = FMT.new_parser()
    start = time.perf_counter()
    events = p.feed_text("[TOOL_CALLS]")
    for ch in body:
        events += p.feed_text(ch)
    got = fold(events + p.finish("stop"))
    assert time.perf_counter() - start < 20
    assert len(got["tool_calls"]) == 1
