"""What a person sees: rich live progress while a benchmark runs, and its results as a rich table."""

from __future__ import annotations

import time
from typing import Optional

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
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


def results_table(results: Results) -> Table:
    table = Table(title=f"unimodel bench — {results.config.model} at {results.config.url}"
                        + (" (interrupted)" if results.interrupted else ""))
    for name in ("run", "done", "errors", "req/s", "out tok/s", "TTFT p50/p99", "TTFA p50/p99", "ITL p50/p99",
                 "E2E p50/p99", "tokens"):
        table.add_column(name, justify="left" if name == "run" else "right")
    rows = [(run.label, run.summary) for run in results.runs]
    if len(rows) > 1:
        rows.append(("all", results.summary))
    for label, s in rows:
        table.add_row(label, str(s.completed), str(s.errors), f"{s.throughput.requests_per_s:.2f}",
                      f"{s.throughput.output_tokens_per_s:,.1f}", _pp(s.ttft), _pp(s.ttfa), _pp(s.itl), _pp(s.e2e),
                      s.tokens.source)
    return table
