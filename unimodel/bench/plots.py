"""PNG plots with matplotlib (the ``bench`` extra), drawn on matplotlib's Agg canvas through ``Figure``
directly: no pyplot, so no global backend or figure state is touched.

- ``latency_cdf.png``: the CDFs of TTFT, TTFA, ITL and end-to-end latency, one line per run;
- ``throughput_vs_concurrency.png`` (``_vs_rate`` for an open loop): output tokens/s and requests/s against the
  load, one line per effort;
- ``ttft_vs_concurrency.png`` (``_vs_rate``): TTFT p50/p99 (and TTFA p50) against the load, one line per effort.

The load is the run's number of streams for a closed loop (a log2 axis: a sweep doubles it), and the offered
request rate for an open loop (requests/s, from zero). Rules, so that no plot misleads:

- a plot is drawn only from runs with a completed request (a run where everything failed has no point: it
  is in the errors table), and is not written when it would have no point at all: :func:`write_plots` returns
  why, and the report says it;
- the against-load plots need two load levels in one effort's series: with one level (one concurrency, one
  rate) each line would be one dot, and the report's runs table shows the same figures;
- every measured axis (latency, throughput, fraction of requests) starts at zero, and an axis whose values are
  all zero spans 0 to 1 rather than matplotlib's -0.05 to 0.05.
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


LoadAxis = tuple[str, str, dict[str, list[RunResult]]]  # (file suffix, axis label, runs by effort)


def _x(run: RunResult) -> float:
    return float(run.concurrency) if run.mode == "closed" and run.concurrency is not None else float(run.rate or 0)


def load_axis(results: Results) -> LoadAxis:
    """The runs with a completed request, by effort and sorted by load, and how the load axis is named."""
    groups: dict[str, list[RunResult]] = {}
    for run in results.runs:
        if run.summary.completed > 0 and _x(run) > 0:
            groups.setdefault(run.effort or "default", []).append(run)
    rate = results.config.mode == "open"
    label = "request rate (requests/s)" if rate else "concurrency (streams)"
    return ("rate" if rate else "concurrency", label, {k: sorted(v, key=_x) for k, v in groups.items()})


def latency_cdf(bench: Bench) -> Any:
    """The four CDFs (a ``Figure``); None when no request completed."""
    values_by_run = [(state.label, [request_values(r) for r in state.records if r.ok]) for state in bench.runs]
    series = {name: [(label, sorted(1e3 * v[name][0] for v in values if name in v)) for label, values in values_by_run]
              for name, _ in CDF_METRICS}
    if not any(values for lines in series.values() for _, values in lines):
        return None
    fig = _figure(11, 7.5)
    axes = fig.subplots(2, 2).flatten()
    for ax, (name, title) in zip(axes, CDF_METRICS):
        for label, values in series[name]:
            if values:
                n = len(values)
                ax.step([0.0] + values, [0.0] + [(i + 1) / n for i in range(n)], where="post", label=label)
        if not any(values for _, values in series[name]):
            ax.text(0.5, 0.5, "no request has this figure", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of requests")
        ax.set_xlim(left=0)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        _legend(ax, fontsize="x-small")
    return fig


def throughput_vs_load(axis: LoadAxis) -> Any:
    _, xlabel, groups = axis
    fig = _figure(11, 4.5)
    tokens_ax, requests_ax = fig.subplots(1, 2)
    for effort, runs in groups.items():
        xs = [_x(r) for r in runs]
        tokens_ax.plot(xs, [r.summary.throughput.output_tokens_per_s for r in runs], marker="o", label=effort)
        requests_ax.plot(xs, [r.summary.throughput.requests_per_s for r in runs], marker="o", label=effort)
    for ax, label in ((tokens_ax, "output tokens/s"), (requests_ax, "requests/s")):
        _load_axis(ax, axis)
        _from_zero(ax)
        ax.set_ylabel(label)
        ax.set_title(f"{label} against {xlabel.split(' (')[0]}, per effort")
        ax.grid(alpha=0.3)
        _legend(ax, title="effort", fontsize="small")
    return fig


def ttft_vs_load(axis: LoadAxis) -> Any:
    _, xlabel, groups = axis
    fig = _figure(7, 4.5)
    ax = fig.subplots()
    for effort, runs in groups.items():
        xs = [_x(r) for r in runs]
        line = ax.plot(xs, [_y(r.summary.ttft.p50) for r in runs], marker="o", label=f"{effort} TTFT p50")[0]
        ax.plot(xs, [_y(r.summary.ttft.p99) for r in runs], marker="^", linestyle="--", color=line.get_color(),
                label=f"{effort} TTFT p99")
        if any(r.summary.ttfa.p50 is not None for r in runs):
            ax.plot(xs, [_y(r.summary.ttfa.p50) for r in runs], marker="s", linestyle=":", color=line.get_color(),
                    label=f"{effort} TTFA p50")
    _load_axis(ax, axis)
    _from_zero(ax)
    ax.set_ylabel("ms")
    ax.set_title(f"time to first token against {xlabel.split(' (')[0]}, per effort")
    ax.grid(alpha=0.3)
    _legend(ax, fontsize="small")
    return fig


def _legend(ax: Any, **options: Any) -> None:
    if ax.get_legend_handles_labels()[0]:  # matplotlib warns about a legend of nothing
        ax.legend(**options)


def _load_axis(ax: Any, axis: LoadAxis) -> None:
    """Concurrency on a log2 axis (a sweep doubles it), in plain numbers; a request rate linear from zero."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    kind, label, _ = axis
    if kind == "concurrency":
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_xlim(left=0)
    ax.set_xlabel(label)


def _from_zero(ax: Any) -> None:
    """The y axis from zero; when every value is zero (nothing came back), 0 to 1, never a negative axis."""
    top = max((y for line in ax.get_lines() for y in line.get_ydata() if y == y), default=0.0)
    ax.set_ylim(0, top * 1.08 if top > 0 else 1)


def _y(value: Optional[float]) -> float:
    return float("nan") if value is None else value


def write_plots(bench: Bench, results: Results, out_dir: Path) -> tuple[list[Path], dict[str, str]]:
    """The plots there is data for, and for each one not drawn, why (for the report and the terminal)."""
    figures, skipped = plan_plots(bench, results)
    written = []
    for name, fig in figures.items():
        fig.savefig(out_dir / name, dpi=100)
        written.append(out_dir / name)
    return written, skipped


def plan_plots(bench: Bench, results: Results) -> tuple[dict[str, Any], dict[str, str]]:
    """The figures there is data for, by file name, and why each other one is not drawn."""
    figures: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    cdf = latency_cdf(bench)
    if cdf is None:
        skipped["latency_cdf.png"] = "no request completed"
    else:
        figures["latency_cdf.png"] = cdf
    axis = load_axis(results)
    throughput, ttft = f"throughput_vs_{axis[0]}.png", f"ttft_vs_{axis[0]}.png"
    levels = max((len({_x(r) for r in runs}) for runs in axis[2].values()), default=0)
    if levels < 2:
        why = "no request completed" if levels == 0 else "one load level: its figures are in the runs table"
        skipped.update({throughput: why, ttft: why})
        return figures, skipped
    figures[throughput] = throughput_vs_load(axis)
    if any(r.summary.ttft.p50 is not None for runs in axis[2].values() for r in runs):
        figures[ttft] = ttft_vs_load(axis)
    else:
        skipped[ttft] = "no request had a first token"
    return figures, skipped
