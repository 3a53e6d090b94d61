"""No plot without data, a single load level as a table, rate runs against the rate, every axis from zero,
and the plotting hint naming the real extra."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Optional

from unimodel.bench.client import RequestRecord, Target
from unimodel.bench.loadgen import LoadPlan, RunState
from unimodel.bench.plots import plan_plots
from unimodel.bench.report import PLOTS_EXTRA, PLOTS_HINT, build_results
from unimodel.bench.runner import Bench, BenchSpec
from unimodel.bench.workloads import WorkloadOptions, build_workload

ROOT = Path(__file__).resolve().parents[3]


def done(i: int, start: float, tokens: int = 9) -> RequestRecord:
    return RequestRecord(index=i, kind="chat", effort=None, start=start, end=start + 1.0, first_token=start + 0.1,
                         first_answer=start + 0.2, last_token=start + 0.9, chunk_times=[start + 0.9] * tokens,
                         usage_completion_tokens=tokens)


def bench_of(levels: list[tuple[Optional[int], Optional[float], list[RequestRecord]]]) -> Bench:
    """Runs at the given loads: (concurrency, None, records) for a closed loop, (None, rate, records) open."""
    open_loop = levels[0][1] is not None
    plan = LoadPlan(mode="open" if open_loop else "closed", rate=levels[0][1], requests=2)
    bench = Bench(BenchSpec(target=Target("http://127.0.0.1:1/v1"), model="m", workload=build_workload("chat"),
                            plan=plan, sweep=not open_loop and len(levels) > 1))
    for concurrency, rate, records in levels:
        run = RunState(label=f"c={concurrency}" if rate is None else f"rate={rate:g}/s", effort=None,
                       mode="open" if rate is not None else "closed", concurrency=concurrency, rate=rate,
                       started=0.0, finished=True)
        run.records = records
        bench.runs.append(run)
    return bench


def plots(bench: Bench) -> tuple[dict, dict]:
    return plan_plots(bench, build_results(bench, WorkloadOptions()))


def test_a_sweep_is_plotted_against_concurrency_with_every_axis_from_zero() -> None:
    figures, skipped = plots(bench_of([(1, None, [done(0, 0.0)]), (2, None, [done(1, 0.0), done(2, 0.5)])]))
    assert set(figures) == {"latency_cdf.png", "throughput_vs_concurrency.png", "ttft_vs_concurrency.png"}
    assert skipped == {}
    for fig in figures.values():
        for ax in fig.axes:
            assert ax.get_ylim()[0] == 0  # no zoomed y axis
    for ax in figures["latency_cdf.png"].axes:
        assert ax.get_xlim()[0] == 0 and ax.get_ylim() == (0, 1.02)
    assert figures["throughput_vs_concurrency.png"].axes[0].get_xlabel() == "concurrency (streams)"


def test_an_open_loop_is_plotted_against_the_request_rate() -> None:
    figures, _ = plots(bench_of([(None, 0.4, [done(0, 0.0)]), (None, 0.8, [done(1, 0.0)])]))
    assert "throughput_vs_rate.png" in figures and "throughput_vs_concurrency.png" not in figures
    for ax in figures["throughput_vs_rate.png"].axes + figures["ttft_vs_rate.png"].axes:
        assert ax.get_xlabel() == "request rate (requests/s)" and ax.get_xscale() == "linear"
        assert ax.get_xlim()[0] == 0
        assert "concurrency" not in ax.get_title()


def test_a_single_level_is_a_table_not_one_dot_charts() -> None:
    figures, skipped = plots(bench_of([(4, None, [done(0, 0.0), done(1, 0.2)])]))
    assert set(figures) == {"latency_cdf.png"}
    assert skipped == dict.fromkeys(["throughput_vs_concurrency.png", "ttft_vs_concurrency.png"],
                                    "one load level: its figures are in the runs table")


def test_no_plot_without_a_completed_request() -> None:
    failed = [RequestRecord(index=i, kind="chat", effort=None, start=0.0, end=0.1, error="connect_error")
              for i in range(3)]
    figures, skipped = plots(bench_of([(1, None, failed[:1]), (2, None, failed[1:])]))
    assert figures == {} and set(skipped.values()) == {"no request completed"} and len(skipped) == 3


def test_a_level_where_everything_failed_is_no_point() -> None:
    failed = RequestRecord(index=2, kind="chat", effort=None, start=0.0, end=0.1, error="http_503")
    figures, skipped = plots(bench_of([(1, None, [done(0, 0.0)]), (2, None, [failed])]))
    assert set(figures) == {"latency_cdf.png"} and "one load level" in skipped["throughput_vs_concurrency.png"]


def test_no_negative_axis_when_every_value_is_zero() -> None:
    empty = [done(0, 0.0, tokens=0), done(1, 1.0, tokens=0)]  # answered, with no token at all
    for r in empty:
        r.first_token = r.first_answer = r.last_token = None
    figures, skipped = plots(bench_of([(1, None, empty[:1]), (2, None, empty[1:])]))
    tokens_ax = figures["throughput_vs_concurrency.png"].axes[0]
    assert tokens_ax.get_ylim() == (0, 1)  # not matplotlib's -0.05..0.05
    assert skipped == {"ttft_vs_concurrency.png": "no request had a first token"}


def test_the_plotting_hint_names_the_extra_that_brings_matplotlib() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("matplotlib") for dep in extras[PLOTS_EXTRA])
    assert "pip install 'unimodel[bench]'" in PLOTS_HINT and PLOTS_EXTRA == "bench"
