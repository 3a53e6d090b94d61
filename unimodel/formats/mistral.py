"""Mistral output (family ``mistral``; tokenizer v15 as in Mistral Small 4, and older forms).

Hand-written: rendering uses mistral_common, but nothing parses Mistral output *incrementally* from raw text
and from token ids alike (mistral_common's ``experimental.tools`` parses finished token lists only).

Grammar accepted (liberally)::

    [ [THINK] reasoning [/THINK] ] ( answer | [ text ] call+ )
    call := [TOOL_CALLS] name [ARGS] {json}               v11+ (several follow each other, or several names
          | [TOOL_CALLS] name [CALL_ID] id [ARGS] {json}     after one [TOOL_CALLS] if a name follows "}")
          | [TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]      v3-v7 JSON list (or one object)

A ``[THINK]`` that never closes leaves everything as reasoning. ``</s>`` text at the very end is dropped.
Content is passed on exactly as the model wrote it (whitespace-only content before or after tool calls is
dropped). Text after a call is held until it can no longer be a function name (``[A-Za-z0-9_.-]``, optional
surrounding whitespace) or the output ends, then it is content.

Trade-off: each tool call is buffered until its JSON value is complete and :func:`json.loads` accepts it, and
only then emitted as ``ToolCallStart``, one ``ToolCallArgsDelta`` and ``ToolCallEnd``. A client therefore sees
a call's arguments at once rather than character by character, but malformed JSON, or output cut inside a
call, comes back as plain content (the section's raw text, markers included) with finish reason "stop" or
"length" -- never a half call or a crash -- and the streamed result always equals the non-streamed one.
Arguments written as strict JSON are passed on verbatim; JSON with raw control characters in strings is
re-serialised.
"""

from __future__ import annotations

from typing import Any

import re
from collections.abc import Callable, Mapping

from unimodel.formats.base import ModelFormat
from unimodel.formats.jsonscan import JsonValueScanner, arguments_text, calls_from_json
from unimodel.formats.streaming import MarkerStreamParser

THINK, END_THINK, TOOL_CALLS, ARGS, CALL_ID, EOS = "[THINK]", "[/THINK]", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "</s>"

_NAME_PREFIX = re.compile(r"\s*[A-Za-z0-9_.\-]*\s*")
_ID_PREFIX = re.compile(r"\s*[A-Za-z0-9_\-]*\s*")

# tool-call states
_NAME, _CALL_ID, _ARGS, _LEGACY, _AFTER = "name", "call_id", "args", "legacy", "after"


class MistralParser(MarkerStreamParser):
    open_think, close_think, tool_start = THINK, END_THINK, TOOL_CALLS
    eos_markers = (EOS,)
    markers = (THINK, END_THINK, TOOL_CALLS, ARGS, CALL_ID, EOS)
    _first_section_state = _NAME

    _name = ""
    _call_id: str | None = None

    def _section_markers(self) -> tuple[str, ...]:
        if self._state in (_NAME, _AFTER):
            return (ARGS, CALL_ID, TOOL_CALLS, EOS)
        if self._state == _CALL_ID:
            return (ARGS, TOOL_CALLS, EOS)
        return ()  # inside JSON nothing is a marker: "[ARGS]" may sit in a string

    def _section_text(self, text: str) -> str:
        state = self._state
        if state == _ARGS:
            return self._json_text(text, "{", self._on_arguments)
        if state == _LEGACY:
            return self._json_text(text, "[{", self._on_legacy)
        buf = self._cand + text
        end = (_ID_PREFIX if state == _CALL_ID else _NAME_PREFIX).match(buf).end()  # type: ignore[union-attr]
        if end == len(buf):
            self._cand = buf
            if state != _AFTER:
                self._raw += text
            return ""
        if state == _AFTER:
            self._leave_after_call()
            return text
        cut = end - len(self._cand)
        self._raw += text[:cut]
        if state == _NAME and not buf[:end].strip() and buf[end] in "[{":
            self._state, self._scanner = _LEGACY, JsonValueScanner()
        else:
            self._abort()
        return text[cut:]

    def _section_marker(self, marker: str) -> None:
        if marker == TOOL_CALLS:
            if self._state == _AFTER:
                self._leave_after_call()
            else:
                self._abort()
            self._start_section(marker)
            return
        if self._state == _AFTER:  # a name right after the previous call's "}"
            self._raw, self._state = self._cand, _NAME
        value = self._cand.strip()
        self._raw += marker
        self._cand = ""
        if self._state == _NAME:
            if not value:
                self._abort()
                return
            self._name, self._call_id = value, None
        else:
            self._call_id = value or None
        self._state = _ARGS if marker == ARGS else _CALL_ID
        self._scanner = JsonValueScanner()

    def _end_section(self) -> None:
        if self._state == _AFTER:
            self._leave_after_call()
        else:
            self._abort()

    def _on_arguments(self, value: str) -> bool:
        arguments = arguments_text(value)
        if arguments is None:
            return False
        self._emit_call(self._name, arguments, self._call_id)
        self._state = _AFTER
        return True

    def _on_legacy(self, value: str) -> bool:
        calls = calls_from_json(value)
        if calls is None:
            return False
        for name, arguments, call_id in calls:
            self._emit_call(name, arguments, call_id)
        self._state = _AFTER
        return True


class MistralFormat(ModelFormat):
    """``[THINK]``/``[TOOL_CALLS]`` output of Mistral models (v15 and older tool-call forms)."""

    name = "mistral"
    special_token_names = MistralParser.markers

    def new_parser(
        self,
        *,
        special_ids: Mapping[str, int] | None = None,
        id_factory: Callable[[], str] | None = None,
        starts_in_reasoning: bool = False,
    ) -> MistralParser:
        return MistralParser(
            special_ids=special_ids, id_factory=id_factory, starts_in_reasoning=starts_in_reasoning
        )

    def has_markers(self, text: str) -> bool:
        return any(m in text for m in (THINK, END_THINK, TOOL_CALLS, ARGS))

    def closed_thinking_message(self, reasoning: str) -> dict[str, Any]:
        # mistral_common's from_openai turns `reasoning`/`reasoning_content` (equal when both are given) into
        # a closed ThinkChunk, i.e. [THINK]…[/THINK]; vLLM's mistral tokenizer mode renders it that way.
        return {"role": "assistant", "content": "", "reasoning": reasoning, "reasoning_content": reasoning}
