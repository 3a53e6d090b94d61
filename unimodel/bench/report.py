"""From a benchmark's records to what it leaves on disk: ``results.json`` (:mod:`unimodel.bench.schema`),
``records.jsonl`` (one line per measured request), ``report.md`` and the PNG plots.

The top-level ``summary`` pools every measured request of every run, over the runs' summed durations (the
runs are sequential); each run has its own ``summary`` beside it. ``config.shape`` is what each kind of request
really asked for (:mod:`unimodel.bench.shape`), ``errors`` the failures grouped by kind
(:mod:`unimodel.bench.failures`). Plots need matplotlib (the ``bench`` extra, :data:`PLOTS_HINT`); without it
they are skipped, and a plot without data is not drawn (:mod:`unimodel.bench.plots`): :func:`write_outputs`
says which and why, and so does the report.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Optional

from unimodel.bench.client import RequestRecord
from unimodel.bench.failures import summarise_errors
from unimodel.bench.loadgen import RunState
from unimodel.bench.markdown import render_markdown
from unimodel.bench.metrics import request_values, summarize
from unimodel.bench.runner import Bench
from unimodel.bench.schema import BenchConfig, Results, RunResult, Summary
from unimodel.bench.shape import workload_shape
from unimodel.bench.workloads import WorkloadOptions

#: the extra of pyproject.toml that brings matplotlib (tests/unit/bench/test_report_rules.py checks the name)
PLOTS_EXTRA = "bench"
PLOTS_HINT = f"pip install 'unimodel[{PLOTS_EXTRA}]' (from a checkout: pip install -e '.[{PLOTS_EXTRA}]')"


def run_summary(state: RunState, slo: dict[str, float]) -> Summary:
    return summarize(state.records, slo, incomplete=0 if state.finished else state.in_flight)


def build_results(bench: Bench, options: WorkloadOptions, interrupted: bool = False) -> Results:
    spec = bench.spec
    runs = []
    for state in bench.runs:
        samples: dict[str, str] = {}
        for r in state.records:
            if r.error and r.error not in samples:
                samples[r.error] = r.error_message or ""
        runs.append(RunResult(label=state.label, effort=state.effort, mode=state.mode,
                              concurrency=state.concurrency, rate=state.rate,
                              summary=run_summary(state, spec.slo), error_samples=samples))
    pooled = [r for s in bench.runs for r in s.records]
    duration = sum(run.summary.duration_s for run in runs)
    incomplete = sum(run.summary.incomplete for run in runs)
    plan = spec.plan
    config = BenchConfig(
        url=spec.target.base_url, model=spec.model, workload=spec.workload.name, mode=plan.mode,
        concurrency=None if spec.sweep or plan.mode == "open" else plan.concurrency,
        rate=plan.rate if plan.mode == "open" else None, sweep=spec.sweep, requests=plan.request_limit(),
        duration_s=plan.duration_s, warmup=plan.warmup, efforts=list(spec.efforts),
        slo_ms={k: v * 1e3 for k, v in spec.slo.items()}, seed=plan.seed, input_tokens=options.input_tokens,
        output_tokens=options.output_tokens, max_tokens=options.max_tokens, ignore_eos=options.ignore_eos,
        shape=workload_shape(spec.workload, pooled))
    return Results(started_at=bench.started_at, interrupted=interrupted, config=config,
                   summary=summarize(pooled, spec.slo, duration_s=duration, incomplete=incomplete), runs=runs,
                   errors=summarise_errors(pooled))


def record_row(label: str, origin: float, record: RequestRecord) -> dict[str, Any]:
    """One request as a flat JSON object: times in ms from the run's start, its metrics in ms."""
    def ms(t: Optional[float]) -> Optional[float]:
        return None if t is None else round(1e3 * (t - origin), 3)

    values = request_values(record) if record.ok else {}
    return {
        "run": label, "index": record.index, "kind": record.kind, "effort": record.effort,
        "status": record.status, "error": record.error, "error_code": record.error_code,
        "error_message": record.error_message,
        "scheduled_ms": ms(record.scheduled), "start_ms": ms(record.start), "end_ms": ms(record.end),
        **{f"{name}_ms": round(1e3 * values[name][0], 3) if name in values else None
           for name in ("ttft", "ttfa", "itl", "tpot", "e2e")},
        "chunks": len(record.chunk_times), "prompt_tokens": record.prompt_tokens,
        "output_tokens": record.output_tokens, "reasoning_tokens": record.reasoning_tokens,
        "answer_tokens": record.answer_tokens, "output_tokens_source": record.output_tokens_source,
    }


def write_outputs(bench: Bench, results: Results, out_dir: Path) -> tuple[list[Path], dict[str, str]]:
    """Write every output; returns the files written, and the plots not drawn with why ({} when all were)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    path = out_dir / "results.json"
    path.write_text(results.model_dump_json(indent=2) + "\n", encoding="utf-8")
    written.append(path)
    path = out_dir / "records.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for state in bench.runs:
            origin = state.started if state.started is not None else 0.0
            for record in state.records:
                fh.write(json.dumps(record_row(state.label, origin, record)) + "\n")
    written.append(path)
    plots: list[Path] = []
    skipped: dict[str, str] = {}
    if importlib.util.find_spec("matplotlib") is None:  # the bench extra's
        skipped["plots"] = f"matplotlib is not installed: {PLOTS_HINT}"
    else:
        from unimodel.bench.plots import write_plots

        plots, skipped = write_plots(bench, results, out_dir)
    path = out_dir / "report.md"
    path.write_text(render_markdown(results, [p.name for p in plots], skipped), encoding="utf-8")
    return written + plots + [path], skipped
