"""Neutral generation events: what every engine yields and every output parser produces.

An engine's output is a stream of these, independent of the model family and of HTTP. The server turns them
into ``chat.completion.chunk`` frames or folds them into one ``chat.completion`` (``service/assemble.py``),
so a streamed and a non-streamed response are built from the very same events.

Order guarantees an engine gives: reasoning deltas usually come before content deltas, but text a model
writes before its ``[THINK]`` arrives first, as content (as vLLM's Mistral parser does); a tool call
is ``ToolCallStart`` → one or more ``ToolCallArgsDelta`` → ``ToolCallEnd`` with increasing ``index``;
``Usage`` (at most once) and ``Finish`` (exactly once, last) close the stream. ``Logprobs`` come only when the
client asked for them, each after the deltas of its tokens.

``ChoiceEvent`` wraps the events of one of several choices (a request's ``n`` above 1: the choices stage,
``gateway/choices.py``, runs one generation per choice and tags each one's events with its index). Such a
stream holds every choice's events wrapped (their ``Finish`` too), then one untagged ``Usage`` for all of them
and one untagged ``Finish``, so the rules above (``Usage`` at most once, ``Finish`` exactly once and last) hold
for every reader; only the renderers look inside. An engine never yields it.

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
class TopLogprob:
    """One of the likeliest tokens at a position: its text, log probability and UTF-8 bytes (OpenAI's
    ``top_logprobs[]`` entry; ``bytes`` ``None`` where the engine gave none)."""

    token: str
    logprob: float
    bytes: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token's log probability and the likeliest alternatives (``top``, at most 20, likeliest
    first), OpenAI's ``logprobs.content[]`` entry."""

    token: str
    logprob: float
    bytes: tuple[int, ...] | None = None
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True, slots=True)
class Logprobs:
    """The log probabilities of tokens the engine generated, in order; yielded only when the client asked for
    ``logprobs``, right after the deltas those tokens produced (or alone, for tokens that produced no text:
    markers, the stop token). ``reasoning``: the tokens belong to the thinking (its markers included), so they
    are left out where the reasoning is hidden (``include_reasoning: false``)."""

    tokens: tuple[TokenLogprob, ...]
    reasoning: bool = False


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
    reported no usage was counted with our tokenizer, or estimated from characters and frames).
    ``cached_tokens``: prompt tokens the engine read from its prefix cache (an upstream's
    ``usage.prompt_tokens_details.cached_tokens``; the local engine, which keeps no prefix cache, says 0;
    ``None``: not reported)."""

    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int = 0
    estimated: bool = False
    cached_tokens: int | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            self.estimated or other.estimated,
            None if self.cached_tokens is None and other.cached_tokens is None
            else (self.cached_tokens or 0) + (other.cached_tokens or 0),
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


@dataclass(frozen=True, slots=True)
class ChoiceEvent:
    """An event of choice ``index`` of a request with several (``n`` > 1); never a ``Flush``, ``Usage`` or
    another ``ChoiceEvent``."""

    index: int
    event: "Event"


Event = Union[ReasoningDelta, ContentDelta, ToolCallStart, ToolCallArgsDelta, ToolCallEnd, Usage,
              ThinkingBudgetReached, Finish, Flush, Logprobs, ChoiceEvent]


async def close_events(events: AsyncIterator[Event]) -> None:
    """Close an event stream that can be closed (an async generator: its ``finally`` blocks run, which is how
    an engine, and every stage wrapping it, learns that nobody reads on); one that cannot is left alone."""
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
