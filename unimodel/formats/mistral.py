"""Mistral output (family ``mistral``; tokenizer v15 as in Mistral Small 4, and older forms).

Hand-written: rendering uses mistral_common, but nothing parses Mistral output *incrementally* from raw text
and from token ids alike (mistral_common's ``experimental.tools`` parses finished token lists only).

Meant to give the final message vLLM gives with ``--reasoning-parser mistral --tool-call-parser mistral``,
streamed or not. Grammar accepted (liberally)::

    [ text ] [ [THINK] reasoning [/THINK] ] [ text ] call*
    call := [TOOL_CALLS] name [ARGS] {json}                  v11+; several in a row, or several names after
          | [TOOL_CALLS] name [CALL_ID] id [ARGS] {json}         one [TOOL_CALLS] when "[ARGS]" follows a name
          | [TOOL_CALLS] name {json}                         the same as decoded by a server that dropped
                                                             [ARGS] (older vLLM, vLLM's own tests)
          | [TOOL_CALLS] name [ [ARGS] ]                     nothing after the name: arguments {} (as vLLM)
          | [TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]      v3-v7 JSON list (or one object)
          | [TOOL_CALLS] text [{"name": ..., "arguments": {...}}, ...]     v3-v7 with text before the list

Reasoning: the first ``[THINK]`` opens it wherever it comes before a tool call; the text before it and after
``[/THINK]`` is content, joined. A ``[THINK]`` that never closes leaves the rest as reasoning.

Tool calls: a name is whatever the model wrote up to ``[ARGS]``, ``[CALL_ID]`` or ``{`` (whitespace around it
dropped); an id after ``[CALL_ID]`` is kept when it is one word, else one is made. From there the section
*is* a call, as in vLLM: its arguments are the JSON value that follows, verbatim when it is a strict JSON
object (re-serialised when it has raw control characters in strings), else the text as written -- malformed
JSON, a non-object, or, when the output ends first (``max_tokens``, a stop string), the arguments received
so far; a name with nothing after it (the output ends, ``</s>`` or the next ``[TOOL_CALLS]`` comes, with or
without ``[ARGS]``) is a call with arguments ``{}``, whatever the name, as vLLM's non-streamed result (its
streamed one sends no arguments; ours is the same both ways). The finish reason is then ``tool_calls`` (or
``length``: a cut-off call comes back as a call, like OpenAI's). Text after a call's value is dropped, as vLLM
does, unless ``[ARGS]`` makes it the next call's name.

v3-v7 output: a JSON list (or object) right after ``[TOOL_CALLS]``; or, as vLLM's fallback regex ``\\[{.*}\\]``
finds it, a list opened by ``[{`` after some text, which is then dropped (``[TOOL_CALLS] Here you go:
[{"name": ...}]`` is the list's calls, never a call named ``Here you go: [``). The list ends where its
brackets balance (vLLM's regex runs to the last ``}]`` of the output, so a second list further on would make
the whole section content there; here the first list's calls stand and the rest is text after a call).

Never shown as markers: every Mistral control token (``CONTROL_TOKEN_NAMES``: ``[CALL_ID]``, ``[IMG]``,
``[/INST]``, ``[MODEL_SETTINGS]``...) is dropped wherever it carries no meaning here (outside a JSON value),
so a stray ``[/THINK]`` or a second ``[THINK]`` never reaches the client; ``[brackets]`` of other words are
text. A ``[TOOL_CALLS]`` section that is not a call (an empty name -- vLLM makes a call named "" of it, which
no OpenAI client can use --, v3-v7 JSON that does not parse or holds no calls, the text before it included)
loses its marker and its text is content -- before any call; after one, such text is dropped like other text
after a call. ``</s>`` text at the very end is dropped. Content is passed on exactly as the
model wrote it (whitespace-only content before tool calls or thinking is dropped).

Trade-off: each call is emitted when its JSON value is complete (or the output ends): a client sees its
arguments at once rather than character by character, and the streamed result always equals the
non-streamed one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Optional

from unimodel.formats.base import FormatMarkers, ModelFormat
from unimodel.formats.grammar import json_body
from unimodel.formats.jsonscan import JsonValueScanner, arguments_text, calls_from_json
from unimodel.formats.streaming import CONTENT, MarkerStreamParser

if TYPE_CHECKING:
    from unimodel.formats.render import PromptRenderer

THINK, END_THINK, TOOL_CALLS, ARGS, CALL_ID, EOS = "[THINK]", "[/THINK]", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "</s>"

#: the bracketed special tokens of Mistral tokenizers (mistral_common's ``SpecialTokens``; a test keeps this
#: list equal to it). ``<s>``, ``</s>``, ``<unk>``, ``<pad>`` are left out: they are also HTML-like text.
CONTROL_TOKEN_NAMES: tuple[str, ...] = (
    "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]",
    "[TOOL_CALLS]", "[IMG]", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]", "[SUFFIX]", "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]", "[ARGS]", "[CALL_ID]", "[AUDIO]", "[BEGIN_AUDIO]", "[TRANSCRIBE]",
    "[THINK]", "[/THINK]", "[STREAMING_PAD]", "[STREAMING_WORD]", "[NEXT_AUDIO_TEXT]", "[REPEAT_AUDIO_TEXT]",
    "[MODEL_SETTINGS]", "[/MODEL_SETTINGS]",
)

# tool-call states: the name; the id after [CALL_ID]; the arguments' JSON value (before it starts, markers are
# still read); arguments that do not start as JSON; a v3-v7 JSON value; after a call
_NAME, _CALL_ID, _ARGS, _RAW_ARGS, _LEGACY, _AFTER = "name", "call_id", "args", "raw_args", "legacy", "after"
_NAMING = (ARGS, CALL_ID, TOOL_CALLS, EOS)


def _without_eos(text: str) -> str:
    return text[: -len(EOS)] if text.endswith(EOS) else text


def _call_id(text: str) -> str | None:
    """The id the model wrote after ``[CALL_ID]``, or None (one is made) when it is empty or not one word."""
    words = text.split()
    return words[0] if len(words) == 1 else None


class MistralParser(MarkerStreamParser):
    open_think, close_think, tool_start = THINK, END_THINK, TOOL_CALLS
    eos_markers = (EOS,)
    markers = (THINK, END_THINK, TOOL_CALLS, ARGS, CALL_ID, EOS)
    ignored_markers = CONTROL_TOKEN_NAMES
    think_anywhere = True
    _first_section_state = _NAME

    _name = ""
    _call_id: str | None = None
    _lead = ""  # text between [TOOL_CALLS] and a v3-v7 list's "[{": content if the list holds no calls

    # --- the driver's hooks -----------------------------------------------------------------------------

    def _start_section(self, marker: str) -> None:
        self._state, self._cand, self._raw, self._scanner = _NAME, "", "", JsonValueScanner()
        self._lead = ""

    def _section_markers(self) -> tuple[str, ...]:
        state = self._state
        if state in (_NAME, _AFTER):
            return _NAMING
        if state == _CALL_ID:
            return (ARGS, TOOL_CALLS, EOS)
        if state == _RAW_ARGS or (state == _ARGS and not self._scanner.started):
            return (TOOL_CALLS, EOS)
        return ()  # inside JSON nothing is a marker: "[ARGS]" may sit in a string

    def _section_text(self, text: str) -> str:
        state = self._state
        if state == _NAME:
            return self._name_text(text)
        if state == _CALL_ID:
            return self._until_brace(text, self._begin_args_after_id)
        if state == _ARGS:
            return self._args_text(text)
        if state == _LEGACY:
            return self._legacy_text(text)
        if state == _RAW_ARGS:
            self._raw += text
        else:  # _AFTER: dropped, unless [ARGS] makes it the next call's name
            self._cand += text
        return ""

    def _section_marker(self, marker: str) -> None:
        state = self._state
        if marker == TOOL_CALLS:
            self._end_section()
            self._start_section(marker)
        elif state in (_NAME, _AFTER) and marker in (ARGS, CALL_ID):
            name, self._cand = self._cand.strip(), ""
            if name:
                self._name, self._call_id = name, None
                self._state, self._scanner = (_ARGS if marker == ARGS else _CALL_ID), JsonValueScanner()
            elif state == _NAME:
                self._not_a_call("")
        elif state == _CALL_ID and marker == ARGS:
            self._begin_args_after_id()
        # any other marker means nothing here and is dropped

    def _end_section(self) -> None:
        """At the end of output or at the next ``[TOOL_CALLS]``: what the section holds so far."""
        state = self._state
        if state == _NAME:
            name = self._cand.strip()
            if name:  # a name and nothing more: a call without arguments, as vLLM
                self._name, self._call_id = name, None
                self._call("")
            else:
                self._not_a_call("")
        elif state == _LEGACY:
            self._not_a_call(self._lead + _without_eos(self._scanner.value))
        elif state == _CALL_ID:
            self._call_id = _call_id(self._cand)
            self._call("")
        elif state == _ARGS:
            self._call(_without_eos(self._scanner.value).strip())
        elif state == _RAW_ARGS:
            self._call(self._raw.strip())
        else:  # _AFTER
            self._cand = ""

    # --- the states ---------------------------------------------------------------------------------------

    def _name_text(self, text: str) -> str:
        if not self._cand:  # leading whitespace is never kept: the name is stripped, so no rescans of it
            text = text.lstrip()
            if not text:
                return ""
            if text[0] in "[{":  # nothing named: a v3-v7 JSON list or object
                self._state = _LEGACY
                return text
        i = text.find("{")
        if i < 0:
            self._cand += text
            return ""
        self._cand += text[:i]
        if self._cand.endswith("["):  # text, then "[{": a v3-v7 list (vLLM's fallback); the text is dropped
            self._lead, self._cand, self._state = self._cand[:-1], "", _LEGACY
            self._scanner.feed("[")
        else:
            self._begin_args_after_name()
        return text[i:]

    def _until_brace(self, text: str, at_brace: Callable[[], None]) -> str:
        """Gather name or id text (in ``_cand``) up to a ``{``, which starts the arguments."""
        i = text.find("{")
        if i < 0:
            self._cand += text
            return ""
        self._cand += text[:i]
        at_brace()
        return text[i:]

    def _begin_args_after_name(self) -> None:
        self._name, self._call_id = self._cand.strip(), None
        self._cand, self._state, self._scanner = "", _ARGS, JsonValueScanner()

    def _begin_args_after_id(self) -> None:
        self._call_id = _call_id(self._cand)
        self._cand, self._state, self._scanner = "", _ARGS, JsonValueScanner()

    def _args_text(self, text: str) -> str:
        if not self._scanner.started:
            text = text.lstrip()
            if not text:
                return ""
            if text[0] not in "{[":
                self._state, self._raw = _RAW_ARGS, ""
                return text
        end = self._scanner.feed(text)
        if end is None:
            return ""
        self._call(self._scanner.value)
        return text[end:]

    def _legacy_text(self, text: str) -> str:
        end = self._scanner.feed(text)
        if end is None:
            return ""
        calls = calls_from_json(self._scanner.value)
        if calls is None:
            self._not_a_call(self._lead + self._scanner.value)
        else:
            for name, arguments, call_id in calls:
                self._emit_call(name, arguments, call_id)
            self._state, self._cand, self._lead = _AFTER, "", ""
        return text[end:]

    def _call(self, value: str) -> None:
        """The current call, its arguments ``value`` as written: a strict JSON object verbatim, else raw
        (``{}`` when there are none, as vLLM)."""
        self._emit_call(self._name, arguments_text(value) or value or "{}", self._call_id)
        self._state, self._cand, self._raw = _AFTER, "", ""

    def _not_a_call(self, text: str) -> None:
        """The section is no call: its marker is dropped and its text is content (dropped after a call)."""
        self._cand, self._raw, self._lead = "", "", ""
        if self._n_calls:
            self._state = _AFTER
        else:
            self._state = CONTENT
            self._content(text.lstrip())


class MistralFormat(ModelFormat):
    """``[THINK]``/``[TOOL_CALLS]`` output of Mistral models (v15 and older tool-call forms)."""

    name = "mistral"
    special_token_names = MistralParser.markers
    #: nothing: vLLM's Mistral tokenizer keeps [THINK], [/THINK], [TOOL_CALLS] and [ARGS] by default and then
    #: decodes a character split across byte tokens whole, while ``skip_special_tokens: false`` makes it
    #: decode token by token, so such a character came out as U+FFFD (measured on vLLM 0.32). A vLLM with a
    #: Hugging Face tokenizer for a Mistral model drops the markers unless told: give it
    #: ``--upstream-extra-fields '{"skip_special_tokens": false}'``.
    raw_output_fields: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    think_open_text, think_close_text, tool_call_text = THINK, END_THINK, TOOL_CALLS

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

    def tool_call_grammar(self, markers: FormatMarkers, tools: Sequence[tuple[str, dict[str, Any]]], *,
                          at_most_one: bool) -> Optional[str]:
        """``[TOOL_CALLS]name[ARGS]{arguments per the tool's schema}``, once or more (v11+ tokenizers)."""
        args = markers.by_text.get(ARGS)
        if markers.tool_call is None or args is None or not tools:
            return None
        alternatives = " | ".join(f'"{name}" <[{args}]> %json {json_body(schema)}' for name, schema in tools)
        repeat = "" if at_most_one else "+"
        return f"answer: call{repeat}\ncall: <[{markers.tool_call}]> ( {alternatives} )\n"

    def recognises(self, checkpoint: Path) -> bool:
        return (checkpoint / "tekken.json").is_file()

    def load_renderer(self, checkpoint: Path) -> PromptRenderer:
        """mistral_common for a checkpoint with ``tekken.json``; else its chat template."""
        tekken = checkpoint / "tekken.json"
        if not tekken.is_file():
            return super().load_renderer(checkpoint)
        from unimodel.formats.mistral_render import MistralRenderer

        return MistralRenderer(tekken)
