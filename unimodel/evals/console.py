"""The evaluation in the terminal: a table that fits the console's width, the verdict, what failed and why.

The table has more figures than 80 columns hold, and a rich table squeezed below its natural width cuts every
column to "sui…". So the columns are ranked (suite, effort, accuracy, solved, errors first; the interval,
answers cut by max_tokens, tokens and latency after) and the table gets as many, in that rank, as fit without
shrinking; ``report.md`` has them all. Under the table: the A/B verdict (or why there is none), the answers
cut by ``max_tokens`` per effort, and the failures grouped by effort and type with one sample message each.
Also the progress bar of a run, with its ETA.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from unimodel.evals import profiles
from unimodel.evals.results import EvalReport
from unimodel.evals.scoring import ALL, Score

ERROR_LINES = 6  # failure groups printed; report.md and results.json have them all


def _num(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:,.0f}"


# (header, cell) in the order shown; RANK is the order they are given room in
COLUMNS: dict[str, Callable[[Score], str]] = {
    "suite": lambda s: s.suite,
    "effort": lambda s: s.effort,
    "accuracy": lambda s: f"{s.accuracy * 100:.1f}%",
    "95% CI": lambda s: f"{s.ci_low * 100:.0f}–{s.ci_high * 100:.0f}%",
    "solved": lambda s: f"{s.solved}/{s.tasks}",
    "errors": lambda s: str(s.errors),
    "cut": lambda s: str(s.truncated),
    "reasoning": lambda s: _num(s.mean_reasoning_tokens),
    "answer": lambda s: _num(s.mean_answer_tokens),
    "tok/solved": lambda s: _num(s.tokens_per_solved),
    "latency p50": lambda s: "—" if s.latency_s is None else f"{s.latency_s.p50:.2f}s",
    "TTFT p50": lambda s: "—" if s.ttft_s is None else f"{s.ttft_s.p50:.2f}s",
}
RANK = ("suite", "effort", "accuracy", "solved", "errors", "cut", "95% CI", "tok/solved", "latency p50",
        "reasoning", "answer", "TTFT p50")


def _rows(report: EvalReport) -> list[Score]:
    """Suite by suite (efforts in their order), then the rows over all suites."""
    position = {name: i for i, name in enumerate(report.config["suites"])}
    per_suite = sorted((s for s in report.scores if s.suite != ALL), key=lambda s: position.get(s.suite, 0))
    return per_suite + [s for s in report.scores if s.suite == ALL]


def _table(report: EvalReport, names: list[str]) -> Table:
    table = Table(title=f"unimodel eval: {report.config['model']} ({report.wall_s:.1f} s)")
    for name in names:
        table.add_column(name, justify="left" if name in ("suite", "effort") else "right", no_wrap=True)
    rows = _rows(report)
    for i, s in enumerate(rows):
        last_of_suite = i + 1 < len(rows) and rows[i + 1].suite != s.suite
        table.add_row(*(COLUMNS[n](s) for n in names), style="bold" if s.suite == ALL else None,
                      end_section=last_of_suite)
    return table


def fitted_table(report: EvalReport, width: int) -> Table:
    """The table with the most columns, by rank, whose natural width fits ``width``."""
    measure = Console(width=10_000)
    chosen: list[str] = []
    for name in RANK:
        trial = [n for n in COLUMNS if n in chosen or n == name]
        if chosen and measure.measure(_table(report, trial)).maximum > width:
            break
        chosen = trial
    return _table(report, chosen)


def truncation_lines(report: EvalReport) -> list[str]:
    """One line per effort whose answers were cut by max_tokens."""
    limits = report.config.get("max_tokens") or {}
    lines = []
    for s in report.scores:
        if s.suite == ALL and s.truncated:
            answered = s.tasks - s.errors
            lines.append(f"{s.effort}: {s.truncated} of {answered} answers cut at max_tokens "
                         f"{limits.get(s.effort, '?')} (scored as they stand; raise --max-tokens, or run --full)")
    return lines


def render(report: EvalReport, console: Optional[Console] = None) -> None:
    """The report's main figures, in the terminal (report.md has them all)."""
    console = console or Console()
    cfg = report.config
    console.print(fitted_table(report, console.width))
    console.print(f"{cfg['samples']} tasks per suite ({cfg.get('run', 'custom')} run), max_tokens "
                  f"{profiles.summary(cfg['max_tokens'])}", highlight=False)
    for check in report.skipped:
        console.print(f"[yellow]skipped: {escape(check.line())}[/yellow]")
    everything = report.comparison(ALL)
    if everything is not None:
        style = "bold red" if not everything.decided else "bold"
        console.print(f"[{style}]A/B ({everything.b} against {everything.a}): {escape(everything.verdict)}[/]")
    for line in truncation_lines(report):
        console.print(f"[yellow]{escape(line)}[/yellow]")
    failed = sum(r.error is not None for r in report.results)
    if failed:
        console.print(f"[yellow]{failed} of {len(report.results)} requests failed:[/yellow]")
        groups = report.errors
        for group in groups[:ERROR_LINES]:
            console.print("  " + escape(group.line()), highlight=False)
        if len(groups) > ERROR_LINES:
            console.print(f"  … {len(groups) - ERROR_LINES} more kinds in report.md")


def progress_bar(console: Console, get_time: Optional[Callable[[], float]] = None) -> Progress:
    """The run's progress bar: done / total, time spent, and the ETA (rich's estimate from the tasks done so
    far, ``-:--:--`` until there is one). ``get_time`` is the clock (a test's own)."""
    return Progress(TextColumn("eval"), BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), console=console, transient=True, get_time=get_time)
