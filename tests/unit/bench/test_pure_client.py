"""`unimodel bench` is a pure HTTP client: nothing of the server is imported, and it renders what it measured."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from unimodel.bench.client import RequestRecord, Target
from unimodel.bench.loadgen import LoadPlan, RunState
from unimodel.bench.report import build_results, write_outputs
from unimodel.bench.runner import Bench, BenchSpec
from unimodel.bench.schema import Results
from unimodel.bench.workloads import WorkloadOptions, build_workload

ROOT = Path(__file__).resolve().parents[3]


def test_the_bench_package_imports_nothing_of_the_server() -> None:
    code = ("import sys, pkgutil, importlib, unimodel.bench as b\n"
            "for m in pkgutil.iter_modules(b.__path__): importlib.import_module('unimodel.bench.' + m.name)\n"
            "bad = [m for m in sys.modules if m.startswith(('unimodel.server', 'unimodel.engines', "
            "'unimodel.service', 'unimodel.gateway', 'unimodel.config'))]\n"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def _record(i: int, start: float, error: str | None = None) -> RequestRecord:
    if error:
        return RequestRecord(index=i, kind="chat", effort="high", start=start, end=start + 0.1, error=error,
                             error_message="engine | overloaded")
    return RequestRecord(index=i, kind="chat", effort="high", start=start, end=start + 1.0, first_token=start + 0.1,
                         first_answer=start + 0.4, last_token=start + 0.9, chunk_times=[start + 0.9] * 9,
                         usage_completion_tokens=9, usage_reasoning_tokens=3)


def test_results_markdown_and_plots_from_records(tmp_path: Path) -> None:
    spec = BenchSpec(target=Target("http://127.0.0.1:1/v1"), model="m", workload=build_workload("chat"),
                     plan=LoadPlan(concurrency=2, requests=3), efforts=("none", "high"), slo={"ttft": 0.5})
    bench = Bench(spec)
    for effort, offset in (("none", 0.0), ("high", 10.0)):
        run = RunState(label=f"effort={effort} c=2", effort=effort, mode="closed", concurrency=2, started=offset,
                       finished=True)
        run.records = [_record(0, offset), _record(1, offset + 0.5), _record(2, offset + 1.0, error="http_503")]
        bench.runs.append(run)
    bench.runs[-1].finished, bench.runs[-1].in_flight = False, 1  # as if stopped with one request in flight
    results = build_results(bench, WorkloadOptions(), interrupted=True)
    assert results.interrupted and results.summary.incomplete == 1
    assert (results.summary.completed, results.summary.errors) == (4, 2)
    assert results.summary.duration_s == sum(run.summary.duration_s for run in results.runs)
    assert results.runs[0].error_samples == {"http_503": "engine | overloaded"}
    assert results.config.efforts == ["none", "high"] and results.config.slo_ms == {"ttft": 500.0}
    written, skipped = write_outputs(bench, results, tmp_path)
    one_level = "one load level: its figures are in the runs table"  # each effort ran at c=2 only: a table
    assert skipped == {"throughput_vs_concurrency.png": one_level, "ttft_vs_concurrency.png": one_level}
    assert {p.name for p in written} == {"results.json", "records.jsonl", "report.md", "latency_cdf.png"}
    assert Results.model_validate_json((tmp_path / "results.json").read_text()) == results
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == 6
    report = (tmp_path / "report.md").read_text()
    assert "| effort=none c=2 | 2 | 1 |" in report and "| effort=high c=2 | 2 | 1 |" in report
    assert "interrupted" in report and "| http_503 | 2 | engine / overloaded |" in report
    assert f"`ttft_vs_concurrency.png` not drawn: {one_level}" in report
    assert (tmp_path / "latency_cdf.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert not (tmp_path / "ttft_vs_concurrency.png").exists()


def test_a_run_where_everything_failed_still_reports(tmp_path: Path) -> None:
    bench = Bench(BenchSpec(target=Target("http://127.0.0.1:1/v1"), model="m", workload=build_workload("chat"),
                            plan=LoadPlan(requests=2)))
    run = RunState(label="effort=default c=1", effort=None, mode="closed", concurrency=1, started=0.0, finished=True)
    run.records = [_record(0, 0.0, error="connect_error"), _record(1, 0.2, error="connect_error")]
    bench.runs.append(run)
    results = build_results(bench, WorkloadOptions())
    assert results.summary.completed == 0 and results.summary.errors_by_type == {"connect_error": 2}
    assert results.summary.ttft.p50 is None
    written, skipped = write_outputs(bench, results, tmp_path)
    assert [p.name for p in written] == ["results.json", "records.jsonl", "report.md"]  # no plot without data
    assert set(skipped.values()) == {"no request completed"} and len(skipped) == 3
    report = (tmp_path / "report.md").read_text()
    assert "| connect_error | 2 |" in report and "`latency_cdf.png` not drawn: no request completed" in report
    assert not list(tmp_path.glob("*.png"))
