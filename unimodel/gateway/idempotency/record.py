"""What an idempotency store keeps of a finished request, and its compact byte form.

A stored response is the request body's fingerprint, the original request id and ``created`` time (so a
replay carries the same completion id and timestamp), and the neutral generation events
(``protocol/events.py``, with the ``Flush`` write boundaries), not the rendered bytes: a replay goes through
the same encoder as the original, streamed or not, and makes the same chunks. Events are written as short JSON
arrays (``["c", "text"]``; an event of one of several choices as ``["i", index, [its own array]]``) by hand
rather than pickled (the bytes may live in a shared Redis, and unpickling what a store hands back would run its
code) or dumped with a generic dataclass codec (the events are few and fixed; a tag per class keeps the record
small).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from unimodel.protocol.events import (
    ChoiceEvent,
    ContentDelta,
    Event,
    FLUSH,
    Finish,
    Flush,
    Logprobs,
    ReasoningDelta,
    ThinkingBudgetReached,
    TokenLogprob,
    TopLogprob,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)

#: rough bytes one event costs in the record besides its text (for the size bound while recording)
EVENT_OVERHEAD = 24


class RecordError(ValueError):
    """A stored record that cannot be read back (written by another version, or corrupted)."""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    fingerprint: str
    completion_id: str
    created: int
    events: tuple[Event, ...]


def _encode_event(e: Event) -> list[Any]:
    if isinstance(e, ContentDelta):
        return ["c", e.text]
    if isinstance(e, ReasoningDelta):
        return ["r", e.text]
    if isinstance(e, ToolCallArgsDelta):
        return ["ta", e.index, e.text]
    if isinstance(e, ToolCallStart):
        return ["ts", e.index, e.id, e.name]
    if isinstance(e, ToolCallEnd):
        return ["te", e.index]
    if isinstance(e, Usage):
        base = ["u", e.prompt_tokens, e.completion_tokens, e.reasoning_tokens, e.estimated]
        return base if e.cached_tokens is None else [*base, e.cached_tokens]
    if isinstance(e, Logprobs):
        return ["l", e.reasoning, [[t.token, t.logprob, _list(t.bytes), [[a.token, a.logprob, _list(a.bytes)]
                                                                          for a in t.top]] for t in e.tokens]]
    if isinstance(e, ThinkingBudgetReached):
        return ["b", e.thinking_tokens]
    if isinstance(e, Finish):
        return ["f", e.reason]
    if isinstance(e, Flush):  # where the original's writes ended, so a replay is written alike
        return ["w"]
    if isinstance(e, ChoiceEvent):  # one of several choices' events: its index, then the event's own array
        return ["i", e.index, _encode_event(e.event)]
    raise TypeError(f"not a generation event: {type(e).__name__}")


def _list(value: tuple[int, ...] | None) -> list[int] | None:
    return None if value is None else list(value)


def _tuple(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(b) for b in value)


def _logprobs(args: list[Any]) -> Logprobs:
    return Logprobs(tuple(TokenLogprob(str(t[0]), float(t[1]), _tuple(t[2]),
                                       tuple(TopLogprob(str(a[0]), float(a[1]), _tuple(a[2])) for a in t[3]))
                          for t in args[1]), bool(args[0]))


_DECODERS: dict[str, Any] = {
    "c": lambda a: ContentDelta(str(a[0])),
    "r": lambda a: ReasoningDelta(str(a[0])),
    "ta": lambda a: ToolCallArgsDelta(int(a[0]), str(a[1])),
    "ts": lambda a: ToolCallStart(int(a[0]), str(a[1]), str(a[2])),
    "te": lambda a: ToolCallEnd(int(a[0])),
    "u": lambda a: Usage(int(a[0]), int(a[1]), int(a[2]), bool(a[3]), int(a[4]) if len(a) > 4 else None),
    "l": _logprobs,
    "b": lambda a: ThinkingBudgetReached(int(a[0])),
    "f": lambda a: Finish(str(a[0])),  # type: ignore[arg-type]
    "w": lambda a: FLUSH,
    "i": lambda a: _choice(a),
}


def _choice(args: list[Any]) -> ChoiceEvent:
    inner = _decode_event(args[1])
    if isinstance(inner, (ChoiceEvent, Flush, Usage)):
        raise TypeError("a choice's event is never another choice's, a flush or a usage")
    return ChoiceEvent(int(args[0]), inner)


def _decode_event(item: list[Any]) -> Event:
    return _DECODERS[item[0]](item[1:])  # type: ignore[no-any-return]


def event_size(e: Event) -> int:
    """An upper-ish estimate of the bytes ``e`` adds to a record, without encoding it."""
    if type(e) is ChoiceEvent:
        return 8 + event_size(e.event)
    text = getattr(e, "text", None)
    if isinstance(e, Logprobs):  # each entry: its token and its alternatives, each with its bytes and a number
        return EVENT_OVERHEAD + sum(EVENT_OVERHEAD + len(t.token) * 6
                                    + sum(EVENT_OVERHEAD + len(a.token) * 6 for a in t.top) for t in e.tokens)
    return EVENT_OVERHEAD + (len(text) * 2 if isinstance(text, str) else 0)


def encode(record: StoredResponse) -> bytes:
    body = {"v": 1, "f": record.fingerprint, "id": record.completion_id, "t": record.created,
            "e": [_encode_event(e) for e in record.events]}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def decode(data: bytes) -> StoredResponse:
    try:
        body = json.loads(data)
        if body.get("v") != 1:
            raise RecordError(f"unknown record version {body.get('v')!r}")
        events = tuple(_decode_event(item) for item in body["e"])
        return StoredResponse(str(body["f"]), str(body["id"]), int(body["t"]), events)
    except RecordError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise RecordError(f"unreadable idempotency record: {type(exc).__name__}") from exc
