"""Failed requests grouped by what went wrong, with one message each: the errors table of the terminal, of
``report.md`` and ``results.json``'s ``errors``.

A group is an error's type and code (:attr:`RequestRecord.error_kind`: ``http_400 invalid_value``,
``http_404 model_not_found``, ``connect_error ConnectError``), so two different refusals with the same status
are two rows, and the sample is the first message the server (or the transport) gave for it. Messages are
made printable and one line here: they come from the server under test, and end up in a terminal.
"""

from __future__ import annotations

from collections.abc import Iterable

from unimodel.bench.client import RequestRecord
from unimodel.bench.schema import ErrorGroup

MAX_SAMPLE = 300


def one_line(text: str, limit: int = MAX_SAMPLE) -> str:
    """``text`` as one printable line of at most ``limit`` characters (control characters as spaces)."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def summarise_errors(records: Iterable[RequestRecord]) -> list[ErrorGroup]:
    """The failed requests by kind, the most frequent first (then by kind, so the order is stable)."""
    groups: dict[str, ErrorGroup] = {}
    for record in records:
        kind = record.error_kind
        if kind is None:
            continue
        group = groups.get(kind)
        if group is None:
            status = record.status if record.error and record.error.startswith("http_") else None
            groups[kind] = ErrorGroup(kind=kind, status=status, count=1,
                                      sample=one_line(record.error_message or ""))
        else:
            group.count += 1
    return sorted(groups.values(), key=lambda g: (-g.count, g.kind))
