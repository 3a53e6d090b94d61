"""The parser of a raw prompt's output: everything the model writes is content, nothing is looked for.

A raw prompt (the legacy completions API) is read by the model without a chat template, so nothing tells it
to think or call tools in its family's markers, and vLLM's ``/v1/completions`` parses its output for neither:
the text is the answer, as it comes. Special tokens produce no text (the detokenizer skips them), as vLLM's
``skip_special_tokens`` default does.
"""

from __future__ import annotations

from unimodel.formats.base import OutputParser
from unimodel.protocol.events import ContentDelta, Event, Finish, FinishReason


class PlainTextParser(OutputParser):
    """Text in, :class:`ContentDelta` out; never in reasoning, never a tool call."""

    def feed_text(self, text: str) -> list[Event]:
        return [ContentDelta(text)] if text else []

    def feed_token(self, token_id: int, text: str) -> list[Event]:
        return [ContentDelta(text)] if text else []

    def finish(self, reason: FinishReason) -> list[Event]:
        return [Finish(reason)]

    @property
    def in_reasoning(self) -> bool:
        return False
