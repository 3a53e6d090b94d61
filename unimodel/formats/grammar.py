"""Constrained-decoding grammars, as text in llguidance's Lark dialect (no llguidance import here).

The shape every grammar has: an optional thinking block, then the ``answer``, then only EOS::

    start: answer                                  the model does not think
    start: thinking? answer                        it may think first (a family's markers, by token id)
    start: <[^close, eos]>* <[close]> SEP answer   the prompt already opened the thinking (templates that end
                                                   the prompt with the opening marker, a continued message)

A model family gives the pieces (:meth:`unimodel.formats.base.ModelFormat.thinking_grammar` and
``tool_call_grammar``); :func:`json_answer` gives ``answer`` for ``response_format``. Markers are matched by
token id (``<[id]>``), and the thinking text as any token but the closing marker and EOS, so a marker that a
tokenizer also spells as text can never end the thinking by accident.

Whitespace between JSON tokens is one optional space and at most one line break with up to 32 characters of
indentation: enough for pretty-printed JSON, not enough for a model to loop on blanks. Unsupported schema
keywords are ignored (``lenient``), not refused.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Literal

#: how thinking enters the grammar: not at all, optionally first, or already opened by the prompt
ThinkingMode = Literal["off", "optional", "opened"]

_JSON_OPTIONS = {"whitespace_pattern": r"\x20?(\x0D?\x0A[\x20\x09]{0,32})?", "lenient": True}


@dataclass(frozen=True)
class ThinkingGrammar:
    """A family's thinking block: its markers' ids and the layout allowed between it and the answer."""

    open_id: int
    close_id: int
    #: a Lark regex for what may follow the closing marker before the answer ("" for nothing)
    separator: str = ""


def json_body(schema: dict[str, Any]) -> str:
    """A JSON schema as the argument of llguidance's ``%json``, with our whitespace rules."""
    return json.dumps({**schema, "x-guidance": _JSON_OPTIONS})


def json_answer(schema: dict[str, Any]) -> str:
    """Rules making ``answer`` one JSON value valid against ``schema``."""
    return f"answer: %json {json_body(schema)}\n"


def build_grammar(answer_rules: str, thinking: ThinkingGrammar | None, mode: ThinkingMode,
                  end_ids: Collection[int]) -> str:
    """The whole grammar: ``answer_rules`` (which define ``answer``) behind the thinking ``mode`` asks for.

    ``thinking`` None (the tokenizer has no single-token markers) means no thinking block, whatever the mode.
    """
    if thinking is None or mode == "off":
        return "start: answer\n" + answer_rules
    inside = ",".join(str(i) for i in (thinking.close_id, *sorted(end_ids)))
    rest = f"<[^{inside}]>* <[{thinking.close_id}]>" + (f" {thinking.separator}" if thinking.separator else "")
    if mode == "opened":
        return f"start: {rest} answer\n" + answer_rules
    return f"start: thinking? answer\nthinking: <[{thinking.open_id}]> {rest}\n" + answer_rules
