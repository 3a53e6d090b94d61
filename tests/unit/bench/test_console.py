"""What the terminal shows, at 80 columns: the results in columns that fit, and the errors by type under them."""

from __future__ import annotations

from rich.console import Console

from unimodel.bench.client import RequestRecord, Target
from unimodel.bench.console import errors_table, results_table
from unimodel.bench.loadgen import LoadPlan, RunState
from unimodel.bench.report import build_results
from unimodel.bench.runner import Bench, BenchSpec
from unimodel.bench.schema import Results
from unimodel.bench.workloads import WorkloadOptions, build_workload


def results() -> Results:
    bench = Bench(BenchSpec(target=Target("http://127.0.0.1:8000/v1"), model="mistral-small-4",
                            workload=build_workload("chat"), plan=LoadPlan(concurrency=256, requests=3),
                            efforts=("medium", "high")))
    for effort in ("medium", "high"):
        run = RunState(label=f"effort={effort} c=256", effort=effort, mode="closed", concurrency=256, started=0.0,
                       finished=True)
        run.records = [
            RequestRecord(index=0, kind="chat", effort=effort, start=0.0, end=12.5, first_token=0.4,
                          first_answer=3.2, last_token=12.4, chunk_times=[1.0] * 900, usage_completion_tokens=900),
            RequestRecord(index=1, kind="chat", effort=effort, start=0.0, end=0.1, status=400, error="http_400",
                          error_code="invalid_value",
                          error_message="max_tokens (2048) is above the cap of 512 tokens set by the route "
                                        "'default'."),
            RequestRecord(index=2, kind="chat", effort=effort, start=0.0, end=0.1, error="connect_error",
                          error_code="ConnectError", error_message="All connection attempts failed")]
        bench.runs.append(run)
    return build_results(bench, WorkloadOptions())


def render(table: object, width: int = 80) -> list[str]:
    console = Console(width=width, record=True, color_system=None)
    console.print(table)
    return console.export_text().splitlines()


def test_the_results_fit_80_columns_one_line_a_run() -> None:
    lines = render(results_table(results(), 80))
    assert all(len(line) <= 80 for line in lines)
    rows = [line.split() for line in lines if line.strip().startswith(("medium", "high", "all"))]
    assert [row[:4] for row in rows] == [["medium", "c=256", "1", "2"], ["high", "c=256", "1", "2"],
                                         ["all", "2", "4", "0.08"]]  # the runs one after the other
    header = next(line for line in lines if "TTFT" in line).split()
    assert header == ["run", "done", "errors", "req/s", "tok/s", "TTFT", "TTFA", "ITL", "E2E"]
    assert rows[0][-4:] == ["400", "3,200", "13.3", "12,500"]  # p50s in ms
    assert any("p99 and more in report.md" in line for line in lines)


def test_a_wide_terminal_gets_every_figure() -> None:
    lines = render(results_table(results(), 160), 160)
    assert any("TTFT p50/p99" in line for line in lines) and any("effort=medium c=256" in line for line in lines)


def test_the_errors_table_at_80_columns() -> None:
    lines = render(errors_table(results()))
    assert all(len(line) <= 80 for line in lines)
    text = "\n".join(lines)
    assert "errors, by type" in text
    row = next(line for line in lines if "http_400 invalid_value" in line)
    assert row.split()[:3] == ["http_400", "invalid_value", "2"]  # the type never wraps; its count beside it
    assert "max_tokens (2048) is above the cap of 512" in " ".join(" ".join(lines).split())
    assert any(line.split()[:3] == ["connect_error", "ConnectError", "2"] for line in lines)
