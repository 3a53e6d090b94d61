"""Neutral generation events: what every engine yields and every output parser produces.

An engine's output is a stream of these, independent of the model family and of HTTP. The server turns them
into ``chat.completion.chunk`` frames or folds them into one ``chat.completion`` (``service/assemble.py``),
so a streamed and a non-streamed response are built from the very same events.

Order guarantees an engine gives: reasoning deltas usually come before content deltas, but text a model
writes before its ``[THINK]`` arrives first, as content (as vLLM's Mistral parser does); a tool call
is ``ToolCallStart`` → one or more ``ToolCallArgsDelta`` → ``ToolCallEnd`` with increasing ``index``;
``Usage`` (at most once) and ``Finish`` (exactly once, last) close the stream.

``Flush`` carries nothing. It is part of every engine's contract: an engine yields it whenever it is about to
wait (the end of one network read, of one decode step's tokens), never before its first other event and never
twice in a row (``tests/support/flush_rules.py`` checks both; the contract suite runs it on every engine).
What came since the last ``Flush`` was ready at the same moment, so the server writes it as one body write with
adjacent deltas merged into one chunk (as vLLM's ``--stream-interval`` does): under load that turns tens of
writes per answer into a few, with no added latency. The server writes nothing between two ``Flush``es, so an
engine that waits without one holds back what it yielded until its next ``Flush`` or its end. Consumers that do
not write (the non-streamed builder, stages that count or record) ignore it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Union

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ContentDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallArgsDelta:
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallEnd:
    index: int


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one response. ``estimated``: some count is ours, not the engine's (an upstream that
    reported no usage was counted with our tokenizer, or estimated from characters and frames)."""

    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.estimated or other.estimated,
        )


@dataclass(frozen=True, slots=True)
class ThinkingBudgetReached:
    """The engine closed the thinking at its budget (then the model went on to answer)."""

    thinking_tokens: int


@dataclass(frozen=True, slots=True)
class Finish:
    reason: FinishReason


@dataclass(frozen=True, slots=True)
class Flush:
    """The engine is about to wait: what it yielded since the last ``Flush`` may go out as one write."""


FLUSH = Flush()

Event = Union[ReasoningDelta, ContentDelta, ToolCallStart, ToolCallArgsDelta, ToolCallEnd, Usage,
              ThinkingBudgetReached, Finish, Flush]


async def close_events(events: AsyncIterator[Event]) -> None:
    """Close an event stream that can be closed (an async generator: its ``finally`` blocks run, which is how
    an engine, and every stage wrapping it, learns that nobody reads on); one that cannot is left alone."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
