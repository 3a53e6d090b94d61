"""What a person sees: rich live progress while a benchmark runs, its results as a rich table, and under them
the errors by kind with one message each (so the reason for a failed run is on screen, not only in a file)."""

from __future__ import annotations

import time
from typing import Optional

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.markup import escape
from rich.table import Table

from unimodel.bench.client import RequestRecord
from unimodel.bench.loadgen import LoadPlan, RunState
from unimodel.bench.schema import Distribution, Results


class LiveProgress:
    """A rich progress bar per run: requests done (of the count, when the run has one), errors, requests/s."""

    def __init__(self, console: Optional[Console] = None) -> None:
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), console=console,
                                 transient=False)
        self.tasks: dict[int, TaskID] = {}
        self.errors: dict[int, int] = {}
        self.started: dict[int, float] = {}

    def __enter__(self) -> "LiveProgress":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def run_started(self, state: RunState, plan: LoadPlan) -> None:
        key = id(state)
        self.tasks[key] = self.progress.add_task(state.label, total=plan.request_limit(), stats="")
        self.errors[key] = 0
        self.started[key] = time.perf_counter()

    def record(self, state: RunState, record: RequestRecord) -> None:
        key = id(state)
        self.errors[key] += not record.ok
        done = len(state.records)
        elapsed = max(time.perf_counter() - self.started[key], 1e-9)
        self.progress.update(self.tasks[key], completed=done,
                             stats=f"{done - self.errors[key]} ok  {self.errors[key]} errors  "
                                   f"{done / elapsed:.1f} req/s  {state.in_flight} in flight")

    def run_finished(self, state: RunState) -> None:
        task = self.tasks[id(state)]
        self.progress.update(task, total=len(state.records), completed=len(state.records))


def _pp(d: Distribution) -> str:
    return "–" if d.p50 is None else f"{d.p50:,.1f} / {d.p99:,.1f}"


WIDE = 130  # columns a terminal needs for the full results table


def _p50(d: Distribution) -> str:
    return "–" if d.p50 is None else f"{d.p50:,.0f}" if d.p50 >= 100 else f"{d.p50:.1f}"


def results_table(results: Results, width: int = WIDE) -> Table:
    """Every run (and all of them pooled): p50/p99 of each latency when ``width`` allows, else the p50s of the
    figures that matter most in a compact table that fits 80 columns (the report has the rest)."""
    title = (f"unimodel bench — {escape(results.config.model)} at {escape(results.config.url)}"
             + (" (interrupted)" if results.interrupted else ""))
    rows = [(run.label, run.summary) for run in results.runs]
    if len(rows) > 1:
        rows.append(("all", results.summary))
    if width >= WIDE:
        table = Table(title=title)
        for name in ("run", "done", "errors", "req/s", "out tok/s", "TTFT p50/p99", "TTFA p50/p99", "ITL p50/p99",
                     "E2E p50/p99", "tokens"):
            table.add_column(name, justify="left" if name == "run" else "right", no_wrap=name == "run")
        for label, s in rows:
            table.add_row(label, str(s.completed), str(s.errors), f"{s.throughput.requests_per_s:.2f}",
                          f"{s.throughput.output_tokens_per_s:,.1f}", _pp(s.ttft), _pp(s.ttfa), _pp(s.itl),
                          _pp(s.e2e), s.tokens.source)
        return table
    table = Table(title=title, box=box.SIMPLE_HEAD, caption="times: p50 in ms; p99 and more in report.md")
    for name in ("run", "done", "errors", "req/s", "tok/s", "TTFT", "TTFA", "ITL", "E2E"):
        table.add_column(name, justify="left" if name == "run" else "right", no_wrap=True)
    for label, s in rows:
        table.add_row(label.replace("effort=", ""), str(s.completed), str(s.errors),
                      f"{s.throughput.requests_per_s:.2f}", f"{s.throughput.output_tokens_per_s:,.0f}", _p50(s.ttft),
                      _p50(s.ttfa), _p50(s.itl), _p50(s.e2e))
    return table


def errors_table(results: Results) -> Table:
    """The failed requests of every run by kind (the HTTP status and the server's code, or the transport's
    failure), with the first message of each: the type never wraps, the message does."""
    table = Table(title="errors, by type", box=box.SIMPLE_HEAD)
    table.add_column("type", no_wrap=True)
    table.add_column("count", justify="right", no_wrap=True)
    table.add_column("example", overflow="fold")
    for group in results.errors:
        table.add_row(escape(group.kind), str(group.count), escape(group.sample))
    return table
