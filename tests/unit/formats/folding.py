"""Test helpers: fold parser events into a final message, feed inputs cut in every way, tokenize."""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import mistral_common
from mistral_common.tokens.tokenizers.tekken import Tekkenizer

from unimodel.formats import ModelFormat
from unimodel.protocol.events import (
    ContentDelta,
    Event,
    Finish,
    FinishReason,
    ReasoningDelta,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
)


def counter_ids() -> Callable[[], str]:
    numbers = itertools.count()
    return lambda: f"call_{next(numbers)}"


def fold(events: Iterable[Event]) -> dict[str, Any]:
    """The final message the events describe; asserts the ordering rules of ``unimodel.protocol.events``.

    Reasoning may follow content (Mistral's thinking counts wherever it starts: text before it is content,
    streamed at once), never a tool call.
    """
    events = list(events)
    reasoning, content = [], []
    calls: list[dict[str, str]] = []
    open_call: int | None = None
    assert events and isinstance(events[-1], Finish), events
    assert sum(isinstance(e, Finish) for e in events) == 1
    for ev in events[:-1]:
        if isinstance(ev, (ReasoningDelta, ContentDelta)):
            assert ev.text, "empty delta"
            assert open_call is None, "delta inside a tool call"
        if isinstance(ev, ReasoningDelta):
            assert not calls, "reasoning after a tool call"
            reasoning.append(ev.text)
        elif isinstance(ev, ContentDelta):
            content.append(ev.text)
        elif isinstance(ev, ToolCallStart):
            assert open_call is None and ev.index == len(calls)
            assert ev.id and ev.name
            calls.append({"id": ev.id, "name": ev.name, "arguments": ""})
            open_call = ev.index
        elif isinstance(ev, ToolCallArgsDelta):
            assert ev.index == open_call and ev.text
            calls[ev.index]["arguments"] += ev.text
        elif isinstance(ev, ToolCallEnd):
            assert ev.index == open_call
            open_call = None
        else:
            raise AssertionError(f"unexpected event {ev!r}")
    assert open_call is None
    return {
        "reasoning": "".join(reasoning),
        "content": "".join(content),
        "tool_calls": calls,
        "finish": events[-1].reason,
    }


def feed_chunks(fmt: ModelFormat, chunks: Sequence[str], reason: FinishReason = "stop", **kw: Any) -> list[Event]:
    parser = fmt.new_parser(id_factory=counter_ids(), **kw)
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed_text(chunk)
    return events + parser.finish(reason)


def feed_tokens(
    fmt: ModelFormat, tokens: Sequence[tuple[int, str]], reason: FinishReason = "stop",
    special_ids: Mapping[str, int] | None = None, **kw: Any,
) -> list[Event]:
    parser = fmt.new_parser(id_factory=counter_ids(), special_ids=special_ids, **kw)
    events: list[Event] = []
    for token_id, text in tokens:
        events += parser.feed_token(token_id, text)
    return events + parser.finish(reason)


def cuts(text: str, pieces: int) -> Iterator[list[str]]:
    """Every way to cut ``text`` into ``pieces`` parts (empty parts included)."""
    for points in itertools.combinations_with_replacement(range(len(text) + 1), pieces - 1):
        bounds = (0, *points, len(text))
        yield [text[a:b] for a, b in itertools.pairwise(bounds)]


def assert_same_however_cut(fmt: ModelFormat, text: str, reason: FinishReason, expected: dict[str, Any],
                            *, three_way: bool = True, **kw: Any) -> None:
    assert fold(feed_chunks(fmt, [text], reason, **kw)) == expected
    assert fold(feed_chunks(fmt, list(text), reason, **kw)) == expected
    for chunks in itertools.chain(cuts(text, 2), cuts(text, 3) if three_way else ()):
        got = fold(feed_chunks(fmt, chunks, reason, **kw))
        assert got == expected, f"cut as {chunks!r}"


# --- tokens ------------------------------------------------------------------------------------------------


@functools.cache
def tekken() -> Tekkenizer:
    path = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tekken_240911.json")
    return Tekkenizer.from_file(path)


def ordinary_tokens(text: str) -> list[tuple[int, str]]:
    """``text`` as Tekken tokens with their text, decoded incrementally and UTF-8-safely like an engine does."""
    tok = tekken()
    ids = tok.encode(text, bos=False, eos=False)
    out: list[tuple[int, str]] = []
    done = ""
    for i, token_id in enumerate(ids):
        decoded = tok.decode(ids[: i + 1])
        piece = "" if decoded.endswith("\ufffd") else decoded[len(done):]
        done += piece
        out.append((token_id, piece))
    assert done == text
    return out


def tokens(segments: Sequence[str], special_ids: Mapping[str, int]) -> list[tuple[int, str]]:
    """Segments that are keys of ``special_ids`` become that special token; others ordinary tokens."""
    out: list[tuple[int, str]] = []
    for seg in segments:
        if seg in special_ids:
            out.append((special_ids[seg], seg))
        elif seg:
            out += ordinary_tokens(seg)
    return out
