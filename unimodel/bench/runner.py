"""A whole benchmark: for each reasoning effort, one run (closed or open loop) or a sweep of concurrencies.

:class:`Bench` is the live state: the runs so far, each with the records it has measured. It is filled as
the benchmark goes, so a caller that is interrupted (Ctrl-C) still holds everything measured until then.

The sweep runs the closed loop at 1, 2, 4, ... streams up to ``max_concurrency`` (GuideLLM's sweep goes from
one synchronous stream to the server's throughput the same way, in rates), and stops at saturation: the
first level that adds less than 5 % requests/s over the best level before it, or where more than half the
requests fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Optional, Protocol

from unimodel.bench.client import RequestRecord, Target
from unimodel.bench.loadgen import LoadPlan, RunState, run_closed, run_open, saturated, sweep_levels
from unimodel.bench.metrics import summarize
from unimodel.bench.workloads import Workload


@dataclass(frozen=True)
class BenchSpec:
    target: Target
    model: str
    workload: Workload
    plan: LoadPlan
    efforts: tuple[Optional[str], ...] = (None,)  # None: send no reasoning_effort (the server's default)
    sweep: bool = False
    max_concurrency: int = 256
    slo: dict[str, float] = field(default_factory=dict)  # metric → limit in seconds


class Observer(Protocol):
    """What a progress display is told."""

    def run_started(self, state: RunState, plan: LoadPlan) -> None: ...

    def record(self, state: RunState, record: RequestRecord) -> None: ...

    def run_finished(self, state: RunState) -> None: ...


@dataclass
class Bench:
    spec: BenchSpec
    runs: list[RunState] = field(default_factory=list)
    started_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))


def run_label(effort: Optional[str], plan: LoadPlan) -> str:
    load = f"c={plan.concurrency}" if plan.mode == "closed" else f"rate={plan.rate:g}/s"
    return f"effort={effort or 'default'} {load}"


async def run_one(bench: Bench, effort: Optional[str], plan: LoadPlan,
                  observer: Optional[Observer] = None) -> RunState:
    """One run at one load; its state joins ``bench.runs`` before the first request goes out."""
    spec = bench.spec
    state = RunState(label=run_label(effort, plan), effort=effort, mode=plan.mode,
                     concurrency=plan.concurrency if plan.mode == "closed" else None,
                     rate=plan.rate if plan.mode == "open" else None,
                     on_record=observer.record if observer is not None else None)
    bench.runs.append(state)
    if observer is not None:
        observer.run_started(state, plan)
    load = run_closed if plan.mode == "closed" else run_open
    await load(spec.target, spec.workload, spec.model, plan, state)
    if observer is not None:
        observer.run_finished(state)
    return state


async def run_bench(bench: Bench, observer: Optional[Observer] = None) -> None:
    """Every effort in turn: one run, or a sweep to saturation."""
    spec = bench.spec
    for effort in spec.efforts:
        if not spec.sweep:
            await run_one(bench, effort, spec.plan, observer)
            continue
        rates: list[float] = []
        error_fractions: list[float] = []
        for concurrency in sweep_levels(spec.max_concurrency):
            plan = replace(spec.plan, mode="closed", concurrency=concurrency, rate=None)
            state = await run_one(bench, effort, plan, observer)
            summary = summarize(state.records)
            rates.append(summary.throughput.requests_per_s)
            error_fractions.append(summary.errors / len(state.records) if state.records else 1.0)
            if saturated(rates, error_fractions):
                break
