"""The request log's rows as a rich table that fits the terminal (``unimodel logs``).

The columns are kept by priority as the terminal narrows (:mod:`unimodel.telemetry.columns`), request ids are
shortened to a prefix unique among the rows shown, and no cell wraps; ``--wide`` shows every column whole.
Every cell is a :class:`rich.text.Text` of :func:`~unimodel.printable.printable` text: a value an upstream or a
client chose (a model id, a finish reason) prints as it is, never as rich markup (``[bold]`` stays literal) nor
as a terminal's control sequence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Optional

from rich.cells import cell_len
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from unimodel.printable import ELLIPSIS, printable
from unimodel.telemetry.columns import Column, fit, fitted_table, table_width


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def cell(value: Any) -> Text:
    """A table cell: the value's text, literal (no markup) and with its control characters escaped."""
    return Text(printable(_text(value)))


def _effort(row: Mapping[str, Any]) -> str:
    asked, told = row.get("reasoning_effort"), row.get("model_effort")
    if asked is None:
        return "-"
    shown = asked if told in (None, asked) else f"{asked}→{told}"
    budget = row.get("thinking_budget")
    if budget is not None:
        shown += f" ({budget}{', cut' if row.get('thinking_truncated') else ''})"
    return shown


def _tokens(row: Mapping[str, Any]) -> str:
    if row.get("prompt_tokens") is None:
        return "-"
    text = f"{row['prompt_tokens']}/{row.get('reasoning_tokens') or 0}/{row.get('completion_tokens') or 0}"
    return text + ("~" if row.get("tokens_estimated") else "")


#: the columns of ``unimodel logs``, left to right; ``priority`` is the order they are kept in as the terminal
#: narrows (time, status, route, tokens, latency first)
COLUMNS = (
    Column("time", 1),
    Column("id", 6),
    Column("key", 9, cap=12, floor=6),
    Column("route", 3, cap=14, floor=6),
    Column("model", 8, cap=24, floor=10),
    Column("status", 2, justify="right"),
    Column("error", 7, cap=16, floor=8),
    Column("effort", 10, cap=14, floor=6),
    Column("tokens", 4, justify="right"),
    Column("ttft", 11, justify="right"),
    Column("latency", 5, justify="right"),
    Column("finish", 12, cap=10, floor=6),
    Column("upstream", 13, cap=12, floor=8),
)
_ID, _TOKENS = COLUMNS[1], COLUMNS[8]
#: the fewest and the most characters of a shortened request id
ID_CHARS = (8, 24)


def id_length(ids: Iterable[str]) -> int:
    """The shortest prefix length (at least 8, at most 24) that tells the distinct ``ids`` apart, as git
    abbreviates commits: the longest common prefix of two neighbours in sorted order, plus one."""
    ordered = sorted(set(ids))
    need = ID_CHARS[0]
    for a, b in zip(ordered, ordered[1:]):
        common = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        need = max(need, common + 1)
    return min(need, ID_CHARS[1])


def short_id(value: Any, length: int) -> str:
    """The id's first ``length`` characters, and ``…`` when it is longer (printable)."""
    text = _text(value)
    return printable(text if len(text) <= length else text[:length] + ELLIPSIS)


def _time(value: Any, wide: bool) -> str:
    """``MM-DD HH:MM:SS`` in UTC; ``wide``: ``YYYY-MM-DD HH:MM:SS.mmm``."""
    try:
        when = datetime.fromisoformat(str(value))
    except ValueError:
        return printable(_text(value))
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc)
    if not wide:
        return when.strftime("%m-%d %H:%M:%S")
    return when.strftime("%Y-%m-%d %H:%M:%S") + f".{when.microsecond // 1000:03d}"


def _duration(value: Optional[float], wide: bool) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:,.1f} s" if value >= 10_000 and not wide else f"{value:,.0f} ms"


def _cells(rows: Sequence[Mapping[str, Any]], wide: bool) -> list[list[str]]:
    """Each column's cells (printable text), in :data:`COLUMNS`' order."""
    length = 1 << 30 if wide else id_length(_text(r.get("request_id")) for r in rows)
    out: list[list[str]] = [[] for _ in COLUMNS]
    for row in rows:
        values = (_time(row.get("created_at"), wide), short_id(row.get("request_id"), length),
                  row.get("key_name"), row.get("route"), row.get("model"), row.get("status"),
                  row.get("error_type"), _effort(row), _tokens(row), _duration(row.get("ttft_ms"), wide),
                  _duration(row.get("latency_ms"), wide), row.get("finish_reason"), row.get("upstream"))
        for column, value in zip(out, values):
            column.append(printable(_text(value)))
    return out


def rows_view(rows: Sequence[Mapping[str, Any]], *, width: int, wide: bool = False,
              title: Optional[str] = None) -> RenderableType:
    """The rows, newest first as given, in at most ``width`` cells per line, no cell wrapped.

    Without ``wide``: the columns that fit by :data:`COLUMNS`' priorities, ids shortened to a prefix unique among
    these rows, long names cut with ``…``; a caption names what was left out. With ``wide``: every column, every
    value whole, as a table when that fits ``width``, else one block per request (field and value per line)."""
    cells = _cells(rows, wide)
    if wide:
        widths: list[Optional[int]] = [max([cell_len(c.header), *map(cell_len, col)]) for c, col in
                                       zip(COLUMNS, cells)]
        if table_width(widths) > width:
            return _blocks(rows, cells, title)
    else:
        widths = fit(COLUMNS, cells, width)
    notes = []
    if widths[COLUMNS.index(_TOKENS)] is not None:
        notes.append("tokens prompt/reasoning/completion")
    hidden = [c.header for c, w in zip(COLUMNS, widths) if w is None]
    if hidden:
        notes.append(f"hidden: {', '.join(hidden)}")
    if not wide:
        cut_ids = any(text.endswith(ELLIPSIS) for text in cells[COLUMNS.index(_ID)])
        notes.append("--wide shows all, ids whole" if cut_ids else "--wide shows all")
    return fitted_table(COLUMNS, cells, widths, title=title, title_justify="left", caption=" · ".join(notes),
                        caption_justify="left")



def _blocks(rows: Sequence[Mapping[str, Any]], cells: Sequence[Sequence[str]], title: Optional[str]) -> Group:
    """One block per request, a field per line: every value whole, a long one folded (``--wide`` on a
    terminal too narrow for the wide table)."""
    parts: list[RenderableType] = [Text(title)] if title else []
    names = ["time (UTC)", "request_id", *(c.header for c in COLUMNS[2:])]
    for r, row in enumerate(rows):
        block = Table(box=None, show_header=False, pad_edge=False, padding=(0, 1))
        block.add_column(style="bold", no_wrap=True)
        block.add_column(overflow="fold")
        for name, column in zip(names, cells):
            block.add_row(name, Text(column[r]))
        client = row.get("client_request_id")
        if client:
            block.add_row("client id", Text(printable(str(client))))
        parts.append(Text(""))
        parts.append(block)
    return Group(*parts)
