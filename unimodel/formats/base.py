"""The two interfaces of a model family: a format, and the incremental parser of its output.

A :class:`ModelFormat` names a family ("mistral", "think-tags") and owns everything in which families differ,
so that no engine names a marker:

* its markers, as text and -- given a tokenizer -- as token ids (:meth:`ModelFormat.markers`);
* whether a rendered prompt leaves the model inside a thinking block (:meth:`ModelFormat.prompt_opens_thinking`);
* its grammar pieces for constrained decoding (:meth:`ModelFormat.thinking_grammar`,
  :meth:`ModelFormat.tool_call_grammar`; see :mod:`unimodel.formats.grammar`);
* the reasoning levels its model knows, and the one a client's level becomes (:attr:`ModelFormat.reasoning_levels`,
  :meth:`ModelFormat.model_effort_for`; the operator's policy is :mod:`unimodel.formats.reasoning`);
* how a checkpoint's requests are rendered (:meth:`ModelFormat.load_renderer`; :mod:`unimodel.formats.render`)
  and whether a checkpoint is of this family (:meth:`ModelFormat.recognises`);
* one :class:`OutputParser` per generation.

The parser turns the model's output, as it arrives, into the neutral events of :mod:`unimodel.protocol.events`.
It is fed in one of two ways, never both on one parser:

* :meth:`OutputParser.feed_text` -- raw text chunks from an upstream server that decoded special tokens into
  text (vLLM with ``skip_special_tokens: false``); markers are recognised by their text, also when a chunk
  boundary cuts through one.
* :meth:`OutputParser.feed_token` -- one generated token at a time (the in-process engine); a special token
  is recognised by its id only, so a user who types "[THINK]" produces ordinary text.

Both end with :meth:`OutputParser.finish`, which flushes what was held back and emits exactly one ``Finish``.
"""

from __future__ import annotations

import abc
import secrets
import string
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Protocol

from unimodel.formats.grammar import ThinkingGrammar
from unimodel.protocol.effort import EFFORTS, NO_THINKING, Effort, effort_rank
from unimodel.protocol.events import Event, FinishReason

if TYPE_CHECKING:
    from unimodel.formats.render import PromptRenderer

_ID_ALPHABET = string.ascii_letters + string.digits


def new_call_id() -> str:
    """An OpenAI-style tool-call id: ``call_`` and 24 random letters and digits."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


class OutputParser(abc.ABC):
    """Incremental parser of one generation's output."""

    @abc.abstractmethod
    def feed_text(self, text: str) -> list[Event]:
        """Feed raw text; markers are recognised by text, possibly split across chunks."""

    @abc.abstractmethod
    def feed_token(self, token_id: int, text: str) -> list[Event]:
        """Feed one generated token: a special id by id, else ``text`` is ordinary text (may be "")."""

    @abc.abstractmethod
    def finish(self, reason: FinishReason) -> list[Event]:
        """End of output: flush what was held back, then exactly one ``Finish`` as the last event.

        ``"stop"`` becomes ``"tool_calls"`` when at least one tool call was emitted; other reasons stay.
        """

    @property
    @abc.abstractmethod
    def in_reasoning(self) -> bool:
        """True while inside an open thinking block."""

    @property
    def reasoning_text(self) -> str:
        """All reasoning text emitted so far."""
        return ""


class TokenVocabulary(Protocol):
    """What :meth:`ModelFormat.markers` asks of a tokenizer (every renderer answers it)."""

    def single_token_id(self, text: str) -> Optional[int]: ...


@dataclass(frozen=True)
class FormatMarkers:
    """A family's markers as token ids of one tokenizer; None where a marker is not one token there."""

    think_open: Optional[int] = None
    think_close: Optional[int] = None
    #: the token that starts a tool call
    tool_call: Optional[int] = None
    #: every marker the family's parser reads by id, text → id (the parser's ``special_ids``)
    by_text: Mapping[str, int] = field(default_factory=dict)

    @property
    def thinking(self) -> Optional[tuple[int, int]]:
        """The opening and closing thinking ids, when the tokenizer has both as single tokens."""
        if self.think_open is None or self.think_close is None:
            return None
        return self.think_open, self.think_close

    @property
    def ids(self) -> frozenset[int]:
        return frozenset(self.by_text.values())


class ModelFormat(abc.ABC):
    """A model family: its markers, grammar pieces, renderer, and output parser."""

    name: ClassVar[str]
    #: marker texts a parser of this family understands by token id (keys worth putting in ``special_ids``)
    special_token_names: ClassVar[tuple[str, ...]]
    #: the texts of the markers that open and close thinking and start a tool call
    think_open_text: ClassVar[str]
    think_close_text: ClassVar[str]
    tool_call_text: ClassVar[str]
    #: Lark regex for the layout the family writes between its closing thinking marker and the answer
    thinking_separator: ClassVar[str] = ""
    #: the reasoning levels the model itself knows, lowest first; the first is always ``none`` (no thinking).
    #: How the model is told is the renderer's (and, upstream, the ``reasoning_effort`` field's) job
    reasoning_levels: ClassVar[tuple[str, ...]] = (NO_THINKING, "high")
    #: what an OpenAI-compatible upstream is asked for so that its text keeps this family's markers
    #: (``--upstream-parse gateway``/``auto``): by default vLLM's and SGLang's ``skip_special_tokens: false``
    raw_output_fields: ClassVar[Mapping[str, Any]] = MappingProxyType({"skip_special_tokens": False})

    def model_effort_for(self, effort: Effort) -> str:
        """The level the model is told for a client's level, by default: the level itself when the model knows
        it; ``minimal`` (and any level below the model's lowest thinking one) means no thinking; otherwise the
        lowest level the model knows at or above it (a budget then makes up the difference), else its highest."""
        levels = self.reasoning_levels
        if effort in levels:
            return effort
        rank = effort_rank(effort)
        if rank <= effort_rank("minimal"):
            return levels[0]
        above = [level for level in levels[1:] if level in EFFORTS and effort_rank(level) >= rank]
        return above[0] if above else levels[-1]

    def markers(self, vocabulary: TokenVocabulary, *, exclude: Collection[int] = ()) -> FormatMarkers:
        """This family's markers in ``vocabulary`` (a renderer); ids in ``exclude`` (EOS) are left out."""
        by_text: dict[str, int] = {}
        for text in self.special_token_names:
            tid = vocabulary.single_token_id(text)
            if tid is not None and tid not in exclude:
                by_text[text] = tid
        return FormatMarkers(think_open=by_text.get(self.think_open_text),
                             think_close=by_text.get(self.think_close_text),
                             tool_call=by_text.get(self.tool_call_text), by_text=by_text)

    def prompt_opens_thinking(self, prompt_ids: Sequence[int], markers: FormatMarkers,
                              control_ids: Collection[int]) -> bool:
        """Whether the prompt ends inside a thinking block the model is to go on with.

        True when, reading back from the end, the opening marker comes before the closing one and before any
        other control token (a turn delimiter): a template that opens thinking in the generation prompt, or a
        continued assistant message that opened it. A marker a user typed earlier, in their own turn, is behind
        a turn delimiter and does not count.
        """
        if markers.thinking is None:
            return False
        for tid in reversed(prompt_ids):
            if tid == markers.think_open:
                return True
            if tid == markers.think_close or tid in control_ids:
                return False
        return False

    def thinking_grammar(self, markers: FormatMarkers) -> Optional[ThinkingGrammar]:
        """The grammar piece for a thinking block, or None when the tokenizer lacks the markers."""
        if markers.thinking is None:
            return None
        return ThinkingGrammar(markers.thinking[0], markers.thinking[1], self.thinking_separator)

    @abc.abstractmethod
    def tool_call_grammar(self, markers: FormatMarkers, tools: Sequence[tuple[str, dict[str, Any]]], *,
                          at_most_one: bool) -> Optional[str]:
        """Lark rules defining ``answer`` as tool calls in this family's syntax, or None when not possible here.

        ``tools`` are (name, JSON schema of the arguments) pairs the calls may use; one call when
        ``at_most_one``, else one or more.
        """

    def recognises(self, checkpoint: Path) -> bool:
        """Whether a checkpoint directory is evidently of this family (used when no family is configured)."""
        return False

    def load_renderer(self, checkpoint: Path) -> PromptRenderer:
        """The renderer for a checkpoint of this family (blocking): by default its Hugging Face chat template."""
        from transformers import AutoTokenizer

        from unimodel.formats.chat_template import ChatTemplateRenderer

        return ChatTemplateRenderer(AutoTokenizer.from_pretrained(str(checkpoint)))

    @abc.abstractmethod
    def new_parser(
        self,
        *,
        special_ids: Mapping[str, int] | None = None,
        id_factory: Callable[[], str] | None = None,
        starts_in_reasoning: bool = False,
    ) -> OutputParser:
        """A fresh parser for one generation.

        ``special_ids`` maps marker text to token id (for ``feed_token``); names the family does not know are
        ignored. ``id_factory`` makes tool-call ids (default :func:`new_call_id`). ``starts_in_reasoning``: the
        prompt already opened the thinking block, so the output starts inside reasoning.
        """

    @abc.abstractmethod
    def has_markers(self, text: str) -> bool:
        """Whether raw upstream text shows this family's markers (for ``--upstream-parse auto``)."""

    @abc.abstractmethod
    def closed_thinking_message(self, reasoning: str) -> dict[str, Any]:
        """An OpenAI assistant message holding ``reasoning`` as *closed* thinking, to continue from.

        Sent as the last message with ``continue_final_message: true`` when a thinking budget cut the
        thinking short: the model then goes on with the answer.
        """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
