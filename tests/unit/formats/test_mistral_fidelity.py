"""The Mistral parser gives vLLM's final message (``--reasoning-parser mistral --tool-call-parser mistral``).

Issue "fidelity", section "Output parsing": thinking wherever it starts, stray think markers, calls written
without ``[ARGS]`` (as older vLLM decoded them and vLLM's own tests write them), text after a call, v3-v7
output that is not JSON, calls cut off by ``max_tokens``, and control tokens never shown as ``[XYZ]`` text.
Every case folds to the same message however its input is cut, and (where its markers are the parser's own)
when fed as token ids.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from mistral_common.tokens.tokenizers.base import SpecialTokens

from unimodel.formats.mistral import CONTROL_TOKEN_NAMES
from unimodel.protocol.events import (
    ContentDelta,
    Finish,
    ReasoningDelta,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
)

from .folding import assert_same_however_cut, feed_chunks, feed_tokens, fold, tekken, tokens
from .test_mistral import FMT, SPECIAL_IDS, TRICKY_ARGS, _segments, msg

PARIS = '{"city": "Paris"}'
WEATHER = ("call_0", "get_weather", PARIS)

# (id, raw output, finish reason given, expected message, token mode folds the same)
CASES: list[tuple[str, str, str, dict[str, Any], bool]] = [
    # --- thinking wherever it starts; stray think markers ---
    ("content-think-content", "Before\n[THINK]r[/THINK]\nAfter", "stop", msg("Before\n\nAfter", "r"), True),
    ("content-then-open-think", "Before [THINK]still thinking", "length",
     msg("Before ", "still thinking", finish="length"), True),
    ("stray-end-think", "reason[/THINK]answer", "stop", msg("reasonanswer"), True),
    ("stray-end-think-first", "[/THINK]Answer.", "stop", msg("Answer."), True),
    ("second-end-think", "[THINK]r[/THINK]answer[/THINK] more", "stop", msg("answer more", "r"), True),
    ("second-think-block", "[THINK]r[/THINK]a[THINK]b[/THINK]c", "stop", msg("abc", "r"), True),
    ("think-after-call-dropped", "[TOOL_CALLS]f{}[THINK]r[/THINK]x", "stop",
     msg(calls=[("call_0", "f", "{}")], finish="tool_calls"), True),
    # --- calls without [ARGS]: the name runs up to the first "{" ---
    ("no-args-marker", f"[TOOL_CALLS]get_weather{PARIS}", "stop", msg(calls=[WEATHER], finish="tool_calls"), True),
    ("no-args-after-thinking", f"[THINK]need weather[/THINK][TOOL_CALLS]get_weather{PARIS}", "stop",
     msg(reasoning="need weather", calls=[WEATHER], finish="tool_calls"), True),
    ("no-args-after-content", f"Let me check.\n[TOOL_CALLS]get_weather{PARIS}", "stop",
     msg("Let me check.\n", calls=[WEATHER], finish="tool_calls"), True),
    ("no-args-several", f'[TOOL_CALLS]get_weather{PARIS}[TOOL_CALLS]get_time{{"tz": "CET"}}\n[TOOL_CALLS]ping{{}}',
     "stop", msg(calls=[WEATHER, ("call_1", "get_time", '{"tz": "CET"}'), ("call_2", "ping", "{}")],
                 finish="tool_calls"), True),
    ("no-args-mixed-with-args", '[TOOL_CALLS]a[ARGS]{"x": 1}[TOOL_CALLS]b{"y": 2}', "stop",
     msg(calls=[("call_0", "a", '{"x": 1}'), ("call_1", "b", '{"y": 2}')], finish="tool_calls"), True),
    ("no-args-spaces", f"[TOOL_CALLS] get_weather \n{PARIS}\n", "stop", msg(calls=[WEATHER], finish="tool_calls"),
     True),
    ("no-args-call-id", '[TOOL_CALLS]f[CALL_ID]a1B2c3D4e{"x": 1}', "stop",
     msg(calls=[("a1B2c3D4e", "f", '{"x": 1}')], finish="tool_calls"), True),
    ("no-args-tricky-json", f"[TOOL_CALLS]run_code{TRICKY_ARGS}", "stop",
     msg(calls=[("call_0", "run_code", TRICKY_ARGS)], finish="tool_calls"), True),
    # --- names are what the model wrote; text after a call's closing brace is dropped ---
    ("name-any-characters", "[TOOL_CALLS]météo:v2 (beta)[ARGS]{}[TOOL_CALLS]ns/tool.x{}", "stop",
     msg(calls=[("call_0", "météo:v2 (beta)", "{}"), ("call_1", "ns/tool.x", "{}")], finish="tool_calls"), True),
    ("text-after-brace-dropped", f"[TOOL_CALLS]get_weather{PARIS} Let me know!\n", "stop",
     msg(calls=[WEATHER], finish="tool_calls"), True),
    ("text-after-brace-then-call", f"[TOOL_CALLS]get_weather{PARIS} and [TOOL_CALLS]f[ARGS]{{}} bye</s>", "stop",
     msg(calls=[WEATHER, ("call_1", "f", "{}")], finish="tool_calls"), True),
    # --- pre-v11 output that is not JSON: the marker is dropped, the rest is content ---
    ("legacy-not-json", '[TOOL_CALLS] [{"name": "f", "arguments": {oops}}]', "stop",
     msg('[{"name": "f", "arguments": {oops}}]'), True),
    ("legacy-not-json-after-content", "Sure: [TOOL_CALLS] [not json] ok", "stop", msg("Sure: [not json] ok"), True),
    ("legacy-cut", '[TOOL_CALLS] [{"name": "f", "argu', "length", msg('[{"name": "f", "argu', finish="length"),
     True),
    # --- cut off by max_tokens: a tool call with the arguments so far, finish "length" ---
    ("cut-with-args-marker", '[TOOL_CALLS]get_weather[ARGS]{"city": "Pa', "length",
     msg(calls=[("call_0", "get_weather", '{"city": "Pa')], finish="length"), True),
    ("cut-without-args-marker", '[TOOL_CALLS]get_weather{"city": "Pa', "length",
     msg(calls=[("call_0", "get_weather", '{"city": "Pa')], finish="length"), True),
    ("cut-right-after-args", "[THINK]r[/THINK]Sure.[TOOL_CALLS]get_weather[ARGS] ", "length",
     msg("Sure.", "r", [("call_0", "get_weather", "{}")], "length"), True),  # no arguments: {} as vLLM
    ("cut-in-call-id", "[TOOL_CALLS]f[CALL_ID]abc", "length", msg(calls=[("abc", "f", "{}")], finish="length"),
     True),
    ("cut-eos-text-in-args", '[TOOL_CALLS]f[ARGS]{"a": "x</s>', "stop",
     msg(calls=[("call_0", "f", '{"a": "x')], finish="tool_calls"), True),
    # --- malformed arguments at "stop": still the call (as vLLM), whatever the model wrote ---
    ("unclosed-at-stop", '[TOOL_CALLS]f[ARGS]{"a": 1', "stop",
     msg(calls=[("call_0", "f", '{"a": 1')], finish="tool_calls"), True),
    ("args-not-json", "[TOOL_CALLS]f[ARGS] hello world [TOOL_CALLS]g{}", "stop",
     msg(calls=[("call_0", "f", "hello world"), ("call_1", "g", "{}")], finish="tool_calls"), True),
    # --- control tokens are never shown as [XYZ]; other brackets are text ---
    ("control-tokens-dropped", "a[CALL_ID]b[IMG]c[/INST]d[MODEL_SETTINGS]e[INST]f[TOOL_RESULTS]g", "stop",
     msg("abcdefg"), False),
    ("control-tokens-in-reasoning", "[THINK]x[INST]y[TOOL_CALLS]z[THINK][/THINK]w", "stop", msg("w", "xyz"), False),
    ("control-token-in-name", "[TOOL_CALLS]get[IMG]_weather[ARGS][IMG_END]{}", "stop",
     msg(calls=[("call_0", "get_weather", "{}")], finish="tool_calls"), False),
    ("control-tokens-in-json-kept", '[TOOL_CALLS]f[ARGS]{"s": "[INST] and [/THINK]"}', "stop",
     msg(calls=[("call_0", "f", '{"s": "[INST] and [/THINK]"}')], finish="tool_calls"), True),
    ("user-brackets-kept", "Use [brackets], [Word], [think], [IMGS], [/inst] and [/INST", "stop",
     msg("Use [brackets], [Word], [think], [IMGS], [/inst] and [/INST"), True),
]


@pytest.mark.parametrize(("text", "reason", "expected"), [c[1:4] for c in CASES], ids=[c[0] for c in CASES])
def test_same_message_however_cut(text: str, reason: Any, expected: dict[str, Any]) -> None:
    assert_same_however_cut(FMT, text, reason, expected)


@pytest.mark.parametrize(("text", "reason", "expected"), [c[1:4] for c in CASES if c[4]],
                         ids=[c[0] for c in CASES if c[4]])
def test_tokens_fold_like_text(text: str, reason: Any, expected: dict[str, Any]) -> None:
    toks = tokens(_segments(text), SPECIAL_IDS)
    assert fold(feed_tokens(FMT, toks, reason, special_ids=SPECIAL_IDS)) == expected


def test_control_token_names_are_mistral_commons() -> None:
    bracketed = {t.value for t in SpecialTokens if t.value.startswith("[")}
    assert set(CONTROL_TOKEN_NAMES) == bracketed
    assert len(CONTROL_TOKEN_NAMES) == len(bracketed)
    assert set(FMT.special_token_names) - {"</s>"} <= bracketed


def test_control_ids_by_id_only() -> None:
    """Token mode: control ids the parser was given are dropped where they mean nothing; typed text stays."""
    ids = dict(SPECIAL_IDS)
    toks = [(ids["[CALL_ID]"], ""), *tokens(["a [CALL_ID] b"], ids), (ids["[/THINK]"], ""), (ids["[ARGS]"], "")]
    assert fold(feed_tokens(FMT, toks, special_ids=ids)) == msg("a [CALL_ID] b")
    # an id the parser was not given is text as the engine decoded it ("" for a special token)
    img = tekken().get_special_token("[IMG]")
    assert fold(feed_tokens(FMT, [(img, ""), *tokens(["x"], ids)], special_ids=ids)) == msg("x")


def test_content_streams_before_late_thinking() -> None:
    p = FMT.new_parser()
    assert p.feed_text("Before\n[TH") == [ContentDelta("Before\n")]
    assert p.feed_text("INK]r") == [ReasoningDelta("r")]
    assert p.in_reasoning
    assert p.feed_text("[/THINK]\nAfter") == [ContentDelta("\nAfter")]


def test_cut_call_events() -> None:
    p = FMT.new_parser(id_factory=lambda: "call_x")
    assert p.feed_text('Hi[TOOL_CALLS]get_weather[ARGS]{"city": "Pa') == [ContentDelta("Hi")]
    assert p.finish("length") == [ToolCallStart(0, "call_x", "get_weather"),
                                  ToolCallArgsDelta(0, '{"city": "Pa'), ToolCallEnd(0), Finish("length")]


def test_upstream_payload_fields_stay_valid_json_when_valid() -> None:
    """Strict JSON arguments are passed on verbatim, also without [ARGS]."""
    args = json.dumps({"q": "a{b}c", "n": [1, {"m": None}]})
    got = fold(feed_chunks(FMT, [f"[TOOL_CALLS]search{args}trailing"]))
    assert got["tool_calls"][0]["arguments"] == args and json.loads(got["tool_calls"][0]["arguments"])
