"""The request log's rows as a rich table (``unimodel logs``).

Every cell is a :class:`rich.text.Text` of :func:`~unimodel.printable.printable` text: a value an upstream or a
client chose (a model id, a finish reason) prints as it is, never as rich markup (``[bold]`` stays literal) nor
as a terminal's control sequence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Optional

from rich.table import Table
from rich.text import Text

from unimodel.printable import printable


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def cell(value: Any) -> Text:
    """A table cell: the value's text, literal (no markup) and with its control characters escaped."""
    return Text(printable(_text(value)))


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:,.0f}"


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


def rows_table(rows: Sequence[Mapping[str, Any]], title: Optional[str] = None) -> Table:
    """One line per request, newest first as given: tokens are prompt/reasoning/completion (``~`` estimated)."""
    table = Table(title=title, title_justify="left")
    for name, justify in (("created_at", "left"), ("request_id", "left"), ("key_name", "left"),
                          ("route", "left"), ("model", "left"), ("status", "right"), ("error_type", "left"),
                          ("effort", "left"), ("tokens p/r/c", "right"), ("ttft_ms", "right"),
                          ("latency_ms", "right"), ("finish_reason", "left"), ("upstream", "left")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in rows:
        created = _text(row.get("created_at")).replace("T", " ")[:23]
        table.add_row(*map(cell, (created, row.get("request_id"), row.get("key_name"), row.get("route"),
                                  row.get("model"), row.get("status"), row.get("error_type"), _effort(row),
                                  _tokens(row), _ms(row.get("ttft_ms")), _ms(row.get("latency_ms")),
                                  row.get("finish_reason"), row.get("upstream"))))
    return table
