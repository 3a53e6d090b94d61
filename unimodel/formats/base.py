"""The two interfaces of a model family: a format, and the incremental parser of its output.

A :class:`ModelFormat` names a family ("mistral", "think-tags") and makes one :class:`OutputParser` per
generation. The parser turns the model's output, as it arrives, into the neutral events of
:mod:`unimodel.protocol.events`. It is fed in one of two ways, never both on one parser:

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
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from unimodel.protocol.events import Event, FinishReason

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


class ModelFormat(abc.ABC):
    """A model family's output format."""

    name: ClassVar[str]
    #: marker texts a parser of this family understands by token id (keys worth putting in ``special_ids``)
    special_token_names: ClassVar[tuple[str, ...]]

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
