"""The think-tags parser (DeepSeek-R1, Qwen3, ...): same message however the input is cut."""

from __future__ import annotations

import re
from typing import Any

import pytest

from unimodel.formats import get_format
from unimodel.protocol.events import ContentDelta, ReasoningDelta

from .folding import assert_same_however_cut, feed_tokens, fold, ordinary_tokens, tokens
from .test_mistral import msg

FMT = get_format("think-tags")
CALL_F = '<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>'

# (id, raw output, finish reason, expected message, starts_in_reasoning)
CASES: list[tuple[str, str, str, dict[str, Any], bool]] = [
    ("plain", "Just an answer.", "stop", msg("Just an answer."), False),
    ("think-answer", "<think>\nreason\n</think>\n\nAnswer\n", "stop", msg("Answer\n", "\nreason\n"), False),
    ("starts-in-reasoning", "reason</think>\n\nAnswer", "stop", msg("Answer", "reason"), True),
    ("starts-in-reasoning-cut", "still reason", "length", msg(reasoning="still reason", finish="length"), True),
    ("starts-in-reasoning-literal-open", "a <think> b</think>c", "stop", msg("c", "a <think> b"), True),
    ("stray-close-is-content", "reason</think>answer", "stop", msg("reason</think>answer"), False),
    ("think-one-call", "<think>r</think>\n\n" + CALL_F, "stop",
     msg(reasoning="r", calls=[("call_0", "f", '{"a": 1}')], finish="tool_calls"), False),
    ("two-calls", CALL_F + '\n<tool_call>\n{"name": "g", "arguments": {"s": "</tool_call>\\"}"}}\n</tool_call>\n',
     "stop", msg(calls=[("call_0", "f", '{"a": 1}'), ("call_1", "g", '{"s": "</tool_call>\\"}"}')],
                 finish="tool_calls"), False),
    ("content-then-call", "Sure.\n" + CALL_F, "stop",
     msg("Sure.\n", calls=[("call_0", "f", '{"a": 1}')], finish="tool_calls"), False),
    ("missing-close", '<tool_call>{"name": "f", "arguments": "{\\"x\\": 2}"}', "stop",
     msg(calls=[("call_0", "f", '{"x": 2}')], finish="tool_calls"), False),
    ("text-after-call", CALL_F + " done", "stop",
     msg(" done", calls=[("call_0", "f", '{"a": 1}')], finish="tool_calls"), False),
    ("malformed", '<tool_call>\n{"name": "f", "arguments": {"a": }}\n</tool_call>', "stop",
     msg('<tool_call>\n{"name": "f", "arguments": {"a": }}\n</tool_call>'), False),
    ("no-name", '<tool_call>{"arguments": {}}</tool_call>', "stop", msg('<tool_call>{"arguments": {}}</tool_call>'),
     False),
    ("not-json", "<tool_call>call f()</tool_call>", "stop", msg("<tool_call>call f()</tool_call>"), False),
    ("cut-in-call", '<think>r</think><tool_call>{"name": "f", "argu', "length",
     msg('<tool_call>{"name": "f", "argu', "r", finish="length"), False),
    ("cut-in-thinking", "<think>abc", "length", msg(reasoning="abc", finish="length"), False),
    ("partial-tag", "x <thin", "stop", msg("x <thin"), False),
    ("partial-tag-alone", "<thin", "stop", msg("<thin"), False),
    ("late-think-literal", "a<think>b</think>", "stop", msg("a<think>b</think>"), False),
    ("eos-stripped", "<think>r</think>Done.<|im_end|>", "stop", msg("Done.", "r"), False),
    ("eos-text-inside-kept", "a<|im_end|>b", "stop", msg("a<|im_end|>b"), False),
    ("only-whitespace-answer", "<think>r</think>\n\n", "stop", msg(reasoning="r"), False),
]


@pytest.mark.parametrize(("text", "reason", "expected", "starts"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_same_message_however_cut(text: str, reason: Any, expected: dict[str, Any], starts: bool) -> None:
    assert_same_however_cut(FMT, text, reason, expected, starts_in_reasoning=starts)


SPECIAL_IDS = {"<think>": 151667, "</think>": 151668, "<tool_call>": 151657, "</tool_call>": 151658,
               "<|im_end|>": 151645}
TAGS = re.compile("(" + "|".join(re.escape(t) for t in SPECIAL_IDS) + ")")


@pytest.mark.parametrize(("text", "reason", "expected", "starts"),
                         [c[1:] for c in CASES if c[0] not in ("eos-text-inside-kept",)],
                         ids=[c[0] for c in CASES if c[0] not in ("eos-text-inside-kept",)])
def test_tokens_fold_like_text(text: str, reason: Any, expected: dict[str, Any], starts: bool) -> None:
    toks = tokens(TAGS.split(text), SPECIAL_IDS)
    got = fold(feed_tokens(FMT, toks, reason, special_ids=SPECIAL_IDS, starts_in_reasoning=starts))
    assert got == expected


def test_typed_tags_are_content_in_token_mode() -> None:
    toks = ordinary_tokens("<think>x</think>")
    assert fold(feed_tokens(FMT, toks, special_ids=SPECIAL_IDS)) == msg("<think>x</think>")


def test_streaming_and_in_reasoning() -> None:
    p = FMT.new_parser(starts_in_reasoning=True)
    assert p.in_reasoning
    assert p.feed_text("abc</thi") == [ReasoningDelta("abc")]
    assert p.feed_text("nk>\n") == []
    assert not p.in_reasoning
    assert p.feed_text("\nHi") == [ContentDelta("Hi")]
    assert p.reasoning_text == "abc"


def test_has_markers() -> None:
    assert FMT.has_markers("<think>x")
    assert FMT.has_markers("x</think>y")
    assert FMT.has_markers('<tool_call>{"name": "f"}')
    assert not FMT.has_markers("[THINK]x[/THINK] plain")
