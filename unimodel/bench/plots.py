"""PNG plots with matplotlib (the ``bench`` extra), drawn on matplotlib's Agg canvas through ``Figure``
directly: no pyplot, so no global backend or figure state is touched.

- ``latency_cdf.png``: the CDFs of TTFT, TTFA, ITL and end-to-end latency, one line per run;
- ``throughput_vs_concurrency.png``: output tokens/s and requests/s against concurrency, one line per effort;
- ``ttft_vs_concurrency.png``: TTFT p50/p99 (and TTFA p50) against concurrency, one line per effort.

Concurrency is the run's number of workers for a closed loop, and the measured mean concurrency (Little's
law) for an open loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from unimodel.bench.metrics import request_values
from unimodel.bench.runner import Bench
from unimodel.bench.schema import Results, RunResult

CDF_METRICS = (("ttft", "time to first token"), ("ttfa", "time to first answer token"),
               ("itl", "inter-token latency"), ("e2e", "end-to-end latency"))


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # imported here: matplotlib is optional (the bench extra)

    return Figure(figsize=(width, height), layout="constrained")


def _x(run: RunResult) -> float:
    return float(run.concurrency) if run.concurrency is not None else run.summary.mean_concurrency


def _by_effort(results: Results) -> dict[str, list[RunResult]]:
    groups: dict[str, list[RunResult]] = {}
    for run in results.runs:
        if _x(run) > 0:  # a run that measured nothing has no place on a log axis
            groups.setdefault(run.effort or "default", []).append(run)
    return {k: sorted(v, key=_x) for k, v in groups.items()}


def latency_cdf(bench: Bench, path: Path) -> Path:
    fig = _figure(11, 7.5)
    axes = fig.subplots(2, 2).flatten()
    for ax, (name, title) in zip(axes, CDF_METRICS):
        for state in bench.runs:
            values = sorted(1e3 * v[name][0] for v in map(request_values, (r for r in state.records if r.ok))
                            if name in v)
            if values:
                n = len(values)
                ax.step(values, [(i + 1) / n for i in range(n)], where="post", label=state.label)
        ax.set_title(title)
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
        _legend(ax, fontsize="x-small")
    fig.savefig(path, dpi=100)
    return path


def throughput_vs_concurrency(results: Results, path: Path) -> Path:
    fig = _figure(11, 4.5)
    tokens_ax, requests_ax = fig.subplots(1, 2)
    for effort, runs in _by_effort(results).items():
        xs = [_x(r) for r in runs]
        tokens_ax.plot(xs, [r.summary.throughput.output_tokens_per_s for r in runs], marker="o", label=effort)
        requests_ax.plot(xs, [r.summary.throughput.requests_per_s for r in runs], marker="o", label=effort)
    for ax, label in ((tokens_ax, "output tokens/s"), (requests_ax, "requests/s")):
        _concurrency_axis(ax)
        ax.set_ylabel(label)
        ax.set_title(f"{label} against concurrency, per effort")
        ax.grid(alpha=0.3)
        _legend(ax, title="effort", fontsize="small")
    fig.savefig(path, dpi=100)
    return path


def ttft_vs_concurrency(results: Results, path: Path) -> Path:
    fig = _figure(7, 4.5)
    ax = fig.subplots()
    for effort, runs in _by_effort(results).items():
        xs = [_x(r) for r in runs]
        line = ax.plot(xs, [_y(r.summary.ttft.p50) for r in runs], marker="o", label=f"{effort} TTFT p50")[0]
        ax.plot(xs, [_y(r.summary.ttft.p99) for r in runs], marker="^", linestyle="--", color=line.get_color(),
                label=f"{effort} TTFT p99")
        ax.plot(xs, [_y(r.summary.ttfa.p50) for r in runs], marker="s", linestyle=":", color=line.get_color(),
                label=f"{effort} TTFA p50")
    _concurrency_axis(ax)
    ax.set_ylabel("ms")
    ax.set_title("time to first token against concurrency, per effort")
    ax.grid(alpha=0.3)
    _legend(ax, fontsize="small")
    fig.savefig(path, dpi=100)
    return path


def _legend(ax: Any, **options: Any) -> None:
    if ax.get_legend_handles_labels()[0]:  # matplotlib warns about a legend of nothing
        ax.legend(**options)


def _concurrency_axis(ax: Any) -> None:
    """Concurrency on a log2 axis (the sweep doubles it), labelled in plain numbers."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("concurrency")


def _y(value: Optional[float]) -> float:
    return float("nan") if value is None else value


def write_plots(bench: Bench, results: Results, out_dir: Path) -> list[Path]:
    return [latency_cdf(bench, out_dir / "latency_cdf.png"),
            throughput_vs_concurrency(results, out_dir / "throughput_vs_concurrency.png"),
            ttft_vs_concurrency(results, out_dir / "ttft_vs_concurrency.png")]
