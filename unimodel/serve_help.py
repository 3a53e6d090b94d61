"""``unimodel serve --help``: about 140 flags in panels, every flag name whole at any width (80 columns too).

Typer's help puts each option in a table of four columns (the flag, its ``--no-`` form, the type, the help) and
lets rich shrink them all when the terminal is narrow: at 80 columns a long flag came out cut
(``--upstream-max-c…``) and could not even be read, let alone copied. Typer has no setting for its columns, so
this command draws its own panels, the same boxes with the same titles, in two columns: the flag (never wrapped
or cut: its ``--no-`` form on the next line, its type beside it when short) and the help, which takes the room
left and wraps (a long type, such as a list of choices, opens the help instead). The usage line and the
command's text come first, as in typer's. The command's parameters are typer's own (``typer.core.TyperOption``:
typer 0.29 vendors its click). A CLI-layer module: only ``cli.py`` imports it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import typer.core
from rich.console import Console
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

OPTIONS_TITLE = "Options"  # the panel of the command's own options (--config, --help)
INLINE_TYPE_MAX = 34  # a flag and its type on one line up to this width; past it the type opens the help


class SettingsHelpCommand(typer.core.TyperCommand):
    """A typer command whose ``--help`` is drawn by :func:`render_help`."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        render_help(self, ctx, Console(highlight=False))


def render_help(command: Any, ctx: Any, console: Console) -> None:
    """Usage, the command's text, then one panel per ``rich_help_panel`` (the command's own options first)."""
    console.print(Padding(Text(command.get_usage(ctx), style="bold"), 1))
    if command.help:
        text = "\n\n".join(" ".join(part.split()) for part in command.help.strip().split("\n\n"))
        console.print(Padding(Text(text), (0, 1, 1, 1)))
    panels: dict[str, list[Any]] = defaultdict(list)
    for param in command.get_params(ctx):
        if isinstance(param, typer.core.TyperOption) and not param.hidden:
            panels[getattr(param, "rich_help_panel", None) or OPTIONS_TITLE].append(param)
    order = [OPTIONS_TITLE, *(name for name in panels if name != OPTIONS_TITLE)]
    for name in order:
        if panels.get(name):
            console.print(Panel(_table(panels[name], ctx), title=name, title_align="left", border_style="dim"))


def _table(params: list[Any], ctx: Any) -> Table:
    table = Table(show_header=False, box=None, padding=(0, 1), pad_edge=False, expand=True)
    table.add_column(no_wrap=True)  # the flags: whole, whatever the width
    table.add_column(ratio=1, overflow="fold")  # the help takes what is left, and wraps
    for param in params:
        flag, help_text = _row(param, ctx)
        table.add_row(flag, help_text)
    return table


def _row(param: Any, ctx: Any) -> tuple[Text, Text]:
    names = [o for o in param.opts if o.startswith("--")] or list(param.opts)
    negatives = [o for o in param.secondary_opts if o.startswith("--")]
    kind = "" if negatives or getattr(param, "is_flag", False) else _type(param, ctx)
    flag = Text(", ".join(names), style="bold cyan")
    help_text = Text()
    if kind and len(flag) + 1 + len(kind) <= INLINE_TYPE_MAX:
        flag.append(" " + kind, style="yellow")
    elif kind:
        help_text.append(kind + " ", style="yellow")
    for negative in negatives:
        flag.append("\n" + negative, style="bold magenta")
    help_text.append(" ".join((getattr(param, "help", None) or "").split()))
    default = getattr(param, "show_default", None)
    if isinstance(default, str) and default:
        help_text.append(f" [default: {default}]", style="dim")
    return flag, help_text


def _type(param: Any, ctx: Any) -> str:
    """What the flag takes, as typer shows it (``<int>``, ``<local|upstream|vllm>``, ``JSON``, ``FILE``)."""
    shown: Any = getattr(param, "display_type_rich", None)
    if callable(shown):
        try:
            text = shown(ctx=ctx)
        except TypeError:
            text = None
        if text:
            return str(text)
    return param.make_metavar(ctx)
