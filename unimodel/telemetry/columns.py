"""Choosing a table's columns by the terminal's width: the most important ones whole, the rest left out.

Rich fits a table that is too wide by shrinking every column and wrapping each cell, which is how an 80-column
terminal turned ``unimodel logs`` into columns three letters wide and a request id folded over 11 lines. Rich
has no notion of which columns matter, so the choice is made here: each :class:`Column` has a priority, a
widest width it takes before it is cut with ``…`` (``cap``; ``None``: never cut) and a narrowest width it may
be cut to (``floor``). :func:`fit` takes the columns in priority order, each at its natural width (its widest
cell, at most ``cap``), else at ``floor``, and leaves out a column that fits neither; spare width then goes
back to the cut columns, most important first. :func:`fitted_table` builds the rich table with those widths,
``no_wrap`` on every cell, so a line is never longer than the width and never folds.

Written here rather than taken from a library: rich and its neighbours (textual's DataTable, tabulate) either
shrink every column or scroll sideways; a priority list is the ``kubectl``/``ps`` way for a terminal listing.
Cell text must already be printable (see :mod:`unimodel.printable`); widths are terminal cells (``cell_len``:
a wide character counts two).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Optional

from rich import box
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

#: the cells between two columns of :func:`fitted_table`'s table (one space of padding each side of an
#: invisible rule: ``box.SIMPLE_HEAD`` without edges)
GAP = 3


@dataclass(frozen=True)
class Column:
    """One column: its header, its place in the priority order (1 is kept longest), and how it may be cut."""

    header: str
    priority: int
    justify: Literal["left", "right"] = "left"
    cap: Optional[int] = None  # widest width before the cell is cut with "…"; None: always whole
    floor: int = 0  # narrowest width when cut (never narrower than the header)


def _natural(column: Column, cells: Sequence[str]) -> int:
    return max([cell_len(column.header), *(cell_len(c) for c in cells)])


def fit(columns: Sequence[Column], cells: Sequence[Sequence[str]], width: int) -> list[Optional[int]]:
    """The width of each column (``None``: left out) so that the table is at most ``width`` cells wide.

    ``cells[i]`` is column ``i``'s cells. The most important column is always kept, even when it alone is
    wider than ``width`` (rich then cuts it)."""
    natural = [_natural(c, col) for c, col in zip(columns, cells)]
    order = sorted(range(len(columns)), key=lambda i: columns[i].priority)
    chosen: list[Optional[int]] = [None] * len(columns)
    used = -GAP
    for i in order:
        column, full = columns[i], natural[i]
        start = full if column.cap is None else min(full, max(column.cap, cell_len(column.header)))
        tries = [start]
        if column.cap is not None:
            tries.append(min(start, max(column.floor, cell_len(column.header))))
        for w in tries:
            if used + GAP + w <= width or used < 0:
                chosen[i] = w
                used += GAP + w
                break
    spare = width - used
    for i in order:  # give the spare width back to the cut columns, the most important first
        kept = chosen[i]
        if kept is not None and kept < natural[i] and spare > 0:
            more = min(spare, natural[i] - kept)
            chosen[i] = kept + more
            spare -= more
    return chosen


def fitted_table(columns: Sequence[Column], cells: Sequence[Sequence[str]], widths: Sequence[Optional[int]],
                 **table_options: object) -> Table:
    """A rich table of the columns :func:`fit` kept, each exactly its width, no cell wrapped: a cut cell ends
    in ``…``. ``cells[i]`` is column ``i``'s cells; every cell is literal text (no markup)."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, **table_options)  # type: ignore[arg-type]
    kept = [i for i, w in enumerate(widths) if w is not None]
    for i in kept:
        column, w = columns[i], widths[i]
        table.add_column(column.header, justify=column.justify, no_wrap=True, overflow="ellipsis",
                         min_width=w, max_width=w)
    rows = len(cells[0]) if cells else 0
    for r in range(rows):
        table.add_row(*(Text(cells[i][r]) for i in kept))
    return table


def table_width(widths: Sequence[Optional[int]]) -> int:
    """How many cells wide :func:`fitted_table` draws these widths."""
    kept = [w for w in widths if w is not None]
    return sum(kept) + GAP * max(0, len(kept) - 1)
