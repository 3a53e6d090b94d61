"""The Mistral output parser: every case folds to the same message however its input is cut."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from unimodel.formats import get_format
from unimodel.protocol.events import ContentDelta, ReasoningDelta, ToolCallStart

from .folding import assert_same_however_cut, feed_chunks, feed_tokens, fold, ordinary_tokens, tekken, tokens

FMT = get_format("mistral")
MARKERS = ["[THINK]", "[/THINK]", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "</s>"]
TRICKY_ARGS = json.dumps(
    {"code": 'if x: print("}")', "s": "}[ARGS][TOOL_CALLS]{", "q": 'say "hi" \\o/', "n": {"m": [{"o": []}]}}
)


def msg(content: str = "", reasoning: str = "", calls: list[tuple[str, str, str]] | None = None,
        finish: str = "stop") -> dict[str, Any]:
    return {
        "reasoning": reasoning,
        "content": content,
        "tool_calls": [{"id": i, "name": n, "arguments": a} for i, n, a in calls or []],
        "finish": finish,
    }


# (id, raw output, finish reason given, expected message, token mode folds the same)
CASES: list[tuple[str, str, str, dict[str, Any], bool]] = [
    ("empty", "", "stop", msg(), True),
    ("plain", "Hello, world!\nBye.", "stop", msg("Hello, world!\nBye."), True),
    ("think-answer", "[THINK]Let me think.[/THINK]The answer is 4.", "stop",
     msg("The answer is 4.", "Let me think."), True),
    ("think-answer-exact-ws", "[THINK] a\n[/THINK]\n\nAnswer \n", "stop", msg("\n\nAnswer \n", " a\n"), True),
    ("think-one-call", '[THINK]need weather[/THINK][TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}', "stop",
     msg(reasoning="need weather", calls=[("call_0", "get_weather", '{"city": "Paris"}')], finish="tool_calls"),
     True),
    ("two-calls", '[TOOL_CALLS]a[ARGS]{"x": 1}[TOOL_CALLS]b[ARGS]{"y": [1, 2]}', "stop",
     msg(calls=[("call_0", "a", '{"x": 1}'), ("call_1", "b", '{"y": [1, 2]}')], finish="tool_calls"), True),
    ("three-calls", '[TOOL_CALLS]a[ARGS]{}\n[TOOL_CALLS]b[ARGS] {"k": "v"}[TOOL_CALLS]c[ARGS]{"n": null}\n', "stop",
     msg(calls=[("call_0", "a", "{}"), ("call_1", "b", '{"k": "v"}'), ("call_2", "c", '{"n": null}')],
         finish="tool_calls"), True),
    ("calls-after-one-marker", '[TOOL_CALLS]a[ARGS]{"x": 1}b[ARGS]{"y": 2}', "stop",
     msg(calls=[("call_0", "a", '{"x": 1}'), ("call_1", "b", '{"y": 2}')], finish="tool_calls"), True),
    ("tricky-json", f"[TOOL_CALLS]run_code[ARGS]{TRICKY_ARGS}", "stop",
     msg(calls=[("call_0", "run_code", TRICKY_ARGS)], finish="tool_calls"), True),
    ("content-then-call", 'Let me check.\n[TOOL_CALLS]lookup[ARGS]{"q": "x"}', "stop",
     msg("Let me check.\n", calls=[("call_0", "lookup", '{"q": "x"}')], finish="tool_calls"), True),
    ("whitespace-before-call-dropped", "[THINK]x[/THINK]\n\n[TOOL_CALLS]f[ARGS]{}", "stop",
     msg(reasoning="x", calls=[("call_0", "f", "{}")], finish="tool_calls"), True),
    # the issue "fidelity" changed these: text after a call is dropped, a named call stays a call whatever its
    # arguments (as vLLM), a section that is no call loses its marker (see also test_mistral_fidelity.py)
    ("text-after-call-dropped", "[TOOL_CALLS]f[ARGS]{} Done.", "stop",
     msg(calls=[("call_0", "f", "{}")], finish="tool_calls"), True),
    ("word-after-call-dropped", "[TOOL_CALLS]f[ARGS]{}Done", "stop",
     msg(calls=[("call_0", "f", "{}")], finish="tool_calls"), True),
    ("malformed-json-is-a-call", '[TOOL_CALLS]f[ARGS]{"a": 1,}', "stop",
     msg(calls=[("call_0", "f", '{"a": 1,}')], finish="tool_calls"), True),
    ("malformed-json-then-text", 'Hi [TOOL_CALLS]f[ARGS]{"a": tru} ok', "stop",
     msg("Hi ", calls=[("call_0", "f", '{"a": tru}')], finish="tool_calls"), True),
    ("args-not-object", "[TOOL_CALLS]f[ARGS][1, 2]", "stop",
     msg(calls=[("call_0", "f", "[1, 2]")], finish="tool_calls"), True),
    ("args-nan", '[TOOL_CALLS]f[ARGS]{"a": NaN}', "stop",
     msg(calls=[("call_0", "f", '{"a": NaN}')], finish="tool_calls"), True),
    ("free-form-name", "[TOOL_CALLS]not a name[ARGS]{}", "stop",
     msg(calls=[("call_0", "not a name", "{}")], finish="tool_calls"), True),
    ("empty-name-no-call", "[TOOL_CALLS][ARGS]{}", "stop", msg("{}"), True),
    # a name with nothing after it is a call without arguments, as vLLM 0.32 (test_mistral_vllm_forms.py)
    ("prose-after-marker", "[TOOL_CALLS]I cannot do that.", "stop",
     msg(calls=[("call_0", "I cannot do that.", "{}")], finish="tool_calls"), True),
    ("good-then-malformed", '[TOOL_CALLS]f[ARGS]{"a": 1}[TOOL_CALLS]g[ARGS]{"b" 2}', "stop",
     msg(calls=[("call_0", "f", '{"a": 1}'), ("call_1", "g", '{"b" 2}')], finish="tool_calls"), True),
    ("cut-in-thinking", "[THINK]I am thinking about", "length", msg(reasoning="I am thinking about",
                                                                     finish="length"), True),
    ("cut-in-args", '[THINK]r[/THINK][TOOL_CALLS]f[ARGS]{"a": "unfini', "length",
     msg(reasoning="r", calls=[("call_0", "f", '{"a": "unfini')], finish="length"), True),
    ("cut-in-name", "[TOOL_CALLS]get_wea", "length", msg(calls=[("call_0", "get_wea", "{}")], finish="length"),
     True),
    ("cut-in-second-call", "[TOOL_CALLS]f[ARGS]{}[TOOL_CALLS]g[ARGS]{", "length",
     msg(calls=[("call_0", "f", "{}"), ("call_1", "g", "{")], finish="length"), True),
    ("partial-marker-at-end", "See [THIN", "stop", msg("See [THIN"), True),
    ("partial-marker-alone", "[THIN", "stop", msg("[THIN"), True),
    ("marker-lookalike", "[THINKING] [TOOL_CALL] [ARG] </s", "stop", msg("[THINKING] [TOOL_CALL] [ARG] </s"), True),
    ("inactive-markers-dropped", "use [ARGS] or [CALL_ID] or [/THINK] here", "stop", msg("use  or  or  here"),
     True),
    ("think-after-content", "a[THINK]b[/THINK]c", "stop", msg("ac", "b"), True),
    ("second-think-dropped", "[THINK]r[/THINK]a[THINK]b", "stop", msg("ab", "r"), True),
    ("whitespace-before-think", "\n [THINK]r[/THINK]a", "stop", msg("a", "r"), True),
    ("eos-stripped", "Done.</s>", "stop", msg("Done."), True),
    ("eos-after-call", "[TOOL_CALLS]f[ARGS]{}</s>", "stop",
     msg(calls=[("call_0", "f", "{}")], finish="tool_calls"), True),
    ("eos-in-thinking-end", "[THINK]abc</s>", "length", msg(reasoning="abc", finish="length"), True),
    ("eos-text-inside-kept", "a <s>b</s> c</s>", "stop", msg("a <s>b</s> c"), False),
    ("legacy-list", '[TOOL_CALLS][{"name": "f", "arguments": {"a": 1}}, '
                    '{"name": "g", "arguments": "{\\"b\\": 2}", "id": "abc123XYZ"}]</s>', "stop",
     msg(calls=[("call_0", "f", '{"a": 1}'), ("abc123XYZ", "g", '{"b": 2}')], finish="tool_calls"), True),
    ("legacy-object", '[TOOL_CALLS] {"name": "f", "arguments": {"s": "[ARGS]"}}', "stop",
     msg(calls=[("call_0", "f", '{"s": "[ARGS]"}')], finish="tool_calls"), True),
    ("legacy-malformed", '[TOOL_CALLS][{"nam": "f"}]', "stop", msg('[{"nam": "f"}]'), True),
    ("legacy-empty", "[TOOL_CALLS][]", "stop", msg("[]"), True),
    ("call-id", '[TOOL_CALLS]f[CALL_ID]a1B2c3D4e[ARGS]{"x": 1}[TOOL_CALLS]g[CALL_ID]Z9y8X7w6v[ARGS]{}', "stop",
     msg(calls=[("a1B2c3D4e", "f", '{"x": 1}'), ("Z9y8X7w6v", "g", "{}")], finish="tool_calls"), True),
    ("call-id-not-one-word", "[TOOL_CALLS]f[CALL_ID]not ok[ARGS]{}", "stop",
     msg(calls=[("call_0", "f", "{}")], finish="tool_calls"), True),
    ("raw-newline-in-string", '[TOOL_CALLS]f[ARGS]{"code": "a\nb"}', "stop",
     msg(calls=[("call_0", "f", '{"code": "a\\nb"}')], finish="tool_calls"), True),
    ("unicode", "[THINK]café ☕[/THINK]Ünïcode 👍 [TOOL_CALLS]f[ARGS]{\"t\": \"日本\"}", "stop",
     msg("Ünïcode 👍 ", "café ☕", [("call_0", "f", '{"t": "日本"}')], "tool_calls"), True),
    ("call-length-kept", "[TOOL_CALLS]f[ARGS]{}", "length", msg(calls=[("call_0", "f", "{}")], finish="length"),
     True),
]


@pytest.mark.parametrize(("text", "reason", "expected"), [c[1:4] for c in CASES], ids=[c[0] for c in CASES])
def test_same_message_however_cut(text: str, reason: Any, expected: dict[str, Any]) -> None:
    assert_same_however_cut(FMT, text, reason, expected)


# --- token ids ---------------------------------------------------------------------------------------------

SPECIAL_IDS = {
    "[TOOL_CALLS]": tekken().get_special_token("[TOOL_CALLS]"),
    "</s>": tekken().eos_id,
    "[ARGS]": 32,  # not in this Tekken file: any distinct ids do
    "[CALL_ID]": 33,
    "[THINK]": 34,
    "[/THINK]": 35,
}


def _segments(text: str) -> list[str]:
    return re.split("(" + "|".join(re.escape(m) for m in MARKERS) + ")", text)


@pytest.mark.parametrize(("text", "reason", "expected"), [c[1:4] for c in CASES if c[4]],
                         ids=[c[0] for c in CASES if c[4]])
def test_tokens_fold_like_text(text: str, reason: Any, expected: dict[str, Any]) -> None:
    """Every marker text as its special id, the rest as real Tekken tokens: the same message."""
    toks = tokens(_segments(text), SPECIAL_IDS)
    assert fold(feed_tokens(FMT, toks, reason, special_ids=SPECIAL_IDS)) == expected


def test_user_typed_think_stays_content() -> None:
    toks = ordinary_tokens("[THINK]not reasoning[/THINK] [TOOL_CALLS]f[ARGS]{}")
    assert fold(feed_tokens(FMT, toks, special_ids=SPECIAL_IDS)) == msg(
        "[THINK]not reasoning[/THINK] [TOOL_CALLS]f[ARGS]{}")


def test_special_think_opens_reasoning_typed_text_does_not_close_it() -> None:
    toks = tokens(["[THINK]", "typed [/THINK] stays", "[/THINK]", "answer [THINK]"], SPECIAL_IDS)
    assert fold(feed_tokens(FMT, toks, special_ids=SPECIAL_IDS)) == msg("answer [THINK]", "typed [/THINK] stays")


def test_special_ids_inside_json_and_eos_id() -> None:
    toks = tokens(["[TOOL_CALLS]", "get_weather", "[ARGS]", '{"city": "', "[ARGS]", '"}', "</s>"], SPECIAL_IDS)
    assert fold(feed_tokens(FMT, toks, special_ids=SPECIAL_IDS)) == msg(
        calls=[("call_0", "get_weather", '{"city": "[ARGS]"}')], finish="tool_calls")


def test_eos_id_dropped_anywhere_special_think_late_opens_reasoning() -> None:
    toks = tokens(["a", "</s>", "b", "[THINK]", "r", "[/THINK]", "c", "[THINK]", "[CALL_ID]"], SPECIAL_IDS)
    assert fold(feed_tokens(FMT, toks, special_ids=SPECIAL_IDS)) == msg("abc", "r")


def test_without_special_ids_everything_is_text() -> None:
    toks = tokens(["[THINK]", "x", "[/THINK]"], SPECIAL_IDS)
    assert fold(feed_tokens(FMT, toks)) == msg("[THINK]x[/THINK]")


# --- streaming behaviour -----------------------------------------------------------------------------------


def test_holds_back_only_a_possible_marker() -> None:
    p = FMT.new_parser()
    assert p.feed_text("[TH") == []  # "[THINK]" may still come
    assert p.feed_text("E") == [ContentDelta("[THE")]
    assert p.feed_text(" [TH") == [ContentDelta(" ")]  # also after content
    assert p.feed_text("x [TO") == [ContentDelta("[THx ")]
    assert p.feed_text("P]") == [ContentDelta("[TOP]")]
    assert p.feed_text("[/THINK] [b") == [ContentDelta(" [b")]  # a stray "[/THINK]" is dropped
    assert p.feed_text("[IM") == []
    assert p.feed_text("G]") == []


def test_reasoning_streams_and_in_reasoning() -> None:
    p = FMT.new_parser()
    assert not p.in_reasoning
    assert p.feed_text("[THINK]") == []
    assert p.in_reasoning
    assert p.feed_text("abc[/TH") == [ReasoningDelta("abc")]
    assert p.feed_text("INK]x") == [ContentDelta("x")]
    assert not p.in_reasoning and p.reasoning_text == "abc"


def test_starts_in_reasoning() -> None:
    expected = msg("answer", "thinking")
    assert_same_however_cut(FMT, "thinking[/THINK]answer", "stop", expected, starts_in_reasoning=True)
    assert FMT.new_parser(starts_in_reasoning=True).in_reasoning


def test_default_call_ids_are_openai_style() -> None:
    p = FMT.new_parser()
    events = p.feed_text("[TOOL_CALLS]f[ARGS]{}[TOOL_CALLS]g[ARGS]{}") + p.finish("stop")
    ids = [e.id for e in events if isinstance(e, ToolCallStart)]
    assert len(set(ids)) == 2 and all(re.fullmatch(r"call_[A-Za-z0-9]{24}", i) for i in ids)


def test_finish_once_and_no_mixing() -> None:
    p = FMT.new_parser()
    p.feed_text("a")
    with pytest.raises(RuntimeError):
        p.feed_token(1, "b")
    p.finish("stop")
    with pytest.raises(RuntimeError):
        p.finish("stop")
    with pytest.raises(RuntimeError):
        p.feed_text("c")


def test_finish_reason_passthrough() -> None:
    assert fold(feed_chunks(FMT, ["x"], "content_filter"))["finish"] == "content_filter"
    assert fold(feed_chunks(FMT, ["[TOOL_CALLS]f[ARGS]{}"], "content_filter"))["finish"] == "content_filter"


def test_has_markers() -> None:
    assert FMT.has_markers("[THINK]x")
    assert FMT.has_markers("ok [TOOL_CALLS]f[ARGS]{}")
    assert FMT.has_markers("reasoning[/THINK]answer")
    assert not FMT.has_markers("plain text with [brackets] and <think>")
