"""``<think>`` output (family ``think-tags``: DeepSeek-R1, Qwen3, QwQ and others, e.g. behind llama.cpp).

Hand-written for the same reason as :mod:`unimodel.formats.mistral`: no library parses this incrementally
from raw text and from token ids alike. Grammar accepted (liberally)::

    [ <think> reasoning </think> ] answer-and-calls
    call := <tool_call> {"name": "...", "arguments": {...}} </tool_call>      Hermes / Qwen form

Several calls may follow each other; a JSON list of call objects inside one ``<tool_call>`` is accepted too,
and so is a missing ``</tool_call>``. With ``starts_in_reasoning=True`` (templates that open ``<think>`` in the
prompt) the output begins inside thinking and ``</think>`` closes it. The leading whitespace of the answer
after ``</think>`` is dropped (these templates write ``</think>\\n\\n`` as layout); otherwise content is passed
on exactly. End-of-sequence text (``<|im_end|>``, ``<|endoftext|>``, ...) at the very end is dropped.

Trade-off (as for Mistral): a call is buffered until its JSON value is complete and valid, then emitted whole;
malformed or cut-off calls come back as content (raw text, tags included) and never as a half call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

from unimodel.formats.base import FormatMarkers, ModelFormat
from unimodel.formats.grammar import json_body
from unimodel.formats.jsonscan import calls_from_json
from unimodel.formats.streaming import MarkerStreamParser

THINK, END_THINK, TOOL_CALL, END_TOOL_CALL = "<think>", "</think>", "<tool_call>", "</tool_call>"
EOS_TEXTS = ("<|im_end|>", "<|endoftext|>", "<｜end▁of▁sentence｜>", "<|eot_id|>", "</s>")

_JSON, _AFTER = "json", "after"


class ThinkTagsParser(MarkerStreamParser):
    open_think, close_think, tool_start = THINK, END_THINK, TOOL_CALL
    eos_markers = EOS_TEXTS
    markers = (THINK, END_THINK, TOOL_CALL, END_TOOL_CALL, *EOS_TEXTS)
    strip_answer_ws = True
    _first_section_state = _JSON

    _await_close = False

    def _section_markers(self) -> tuple[str, ...]:
        if self._state == _JSON:
            return ()
        closing = (END_TOOL_CALL,) if self._await_close else ()
        return (TOOL_CALL, *closing, *EOS_TEXTS)

    def _section_text(self, text: str) -> str:
        if self._state == _JSON:
            return self._json_text(text, "{[", self._on_value)
        if not text.strip():
            self._cand += text
            return ""
        self._leave_after_call()
        return text

    def _section_marker(self, marker: str) -> None:
        if marker == END_TOOL_CALL:
            self._cand, self._await_close = "", False
            return
        self._leave_after_call()
        self._start_section(marker)

    def _end_section(self) -> None:
        if self._state == _AFTER:
            self._leave_after_call()
        else:
            self._abort()

    def _on_value(self, value: str) -> bool:
        calls = calls_from_json(value)
        if calls is None:
            return False
        for name, arguments, call_id in calls:
            self._emit_call(name, arguments, call_id)
        self._state, self._await_close = _AFTER, True
        return True


class ThinkTagsFormat(ModelFormat):
    """``<think>…</think>`` reasoning and Hermes-style ``<tool_call>`` JSON."""

    name = "think-tags"
    special_token_names = ThinkTagsParser.markers
    think_open_text, think_close_text, tool_call_text = THINK, END_THINK, TOOL_CALL
    thinking_separator = r"/[\r\n]{0,4}/"  # templates write "</think>\n\n" before the answer

    def new_parser(
        self,
        *,
        special_ids: Mapping[str, int] | None = None,
        id_factory: Callable[[], str] | None = None,
        starts_in_reasoning: bool = False,
    ) -> ThinkTagsParser:
        return ThinkTagsParser(
            special_ids=special_ids, id_factory=id_factory, starts_in_reasoning=starts_in_reasoning
        )

    def has_markers(self, text: str) -> bool:
        return any(m in text for m in (THINK, END_THINK, TOOL_CALL))

    def closed_thinking_message(self, reasoning: str) -> dict[str, Any]:
        # chat templates of <think> models render an assistant prefix verbatim when continuing it
        return {"role": "assistant", "content": f"<think>\n{reasoning}\n</think>\n\n"}

    def tool_call_grammar(self, markers: FormatMarkers, tools: Sequence[tuple[str, dict[str, Any]]], *,
                          at_most_one: bool) -> Optional[str]:
        """Hermes calls, ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, one per line.

        Needs both tags as single tokens (as in Qwen's tokenizers): the engine reads the output by token id.
        """
        close = markers.by_text.get(END_TOOL_CALL)
        if markers.tool_call is None or close is None or not tools:
            return None
        calls = [{"type": "object", "additionalProperties": False, "required": ["name", "arguments"],
                  "properties": {"name": {"const": name}, "arguments": schema}} for name, schema in tools]
        body = json_body(calls[0] if len(calls) == 1 else {"anyOf": calls})
        many = "" if at_most_one else ' ("\\n" call)*'
        return f'answer: call{many}\ncall: <[{markers.tool_call}]> "\\n" %json {body} "\\n" <[{close}]>\n'
