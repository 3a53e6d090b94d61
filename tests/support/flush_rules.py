"""The ``Flush`` rules every engine keeps (see ``unimodel/protocol/events.py``), checked on its events; and the
SSE frames of a streamed answer, whatever its writes."""

from __future__ import annotations

from collections.abc import Sequence

from unimodel.protocol.events import Event, Flush


def check_flush_rules(events: Sequence[Event]) -> list[list[Event]]:
    """Assert: never a ``Flush`` first, never two in a row; returns the batches between them."""
    assert events and not isinstance(events[0], Flush), "a Flush before the first event"
    batches: list[list[Event]] = [[]]
    for event in events:
        if isinstance(event, Flush):
            assert batches[-1], "two Flushes in a row"
            batches.append([])
        else:
            batches[-1].append(event)
    return [b for b in batches if b]


def sse_frames(writes: Sequence[bytes]) -> list[bytes]:
    """The SSE frames (``data: ...\\n\\n`` each) of a streamed answer, however its writes grouped them."""
    return [part + b"\n\n" for part in b"".join(writes).split(b"\n\n") if part]
