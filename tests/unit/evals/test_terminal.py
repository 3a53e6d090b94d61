"""What ``unimodel eval`` shows in an 80-column terminal: a table whose columns fit, the progress bar's ETA, and an
A/B run in which every request of one effort failed: no verdict, the side that failed and why."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from tests.support.live_server import LiveServer
from tests.unit.evals.conftest import eval_cli
from unimodel.evals.console import RANK, fitted_table, progress_bar, render
from unimodel.evals.results import EvalReport
from unimodel.evals.runner import TaskResult
from unimodel.evals.scoring import compare, score

SUITES = ["math", "json", "tools", "code", "vision"]


def _report() -> EvalReport:
    results = [TaskResult(task_id=f"{suite}-{i:03d}", suite=suite, effort=effort, correct=i % 2 == 0, answer="1",
                          detail="", error=None, error_type=None, finish_reason="length" if i == 1 else "stop",
                          prompt_tokens=50, completion_tokens=1234, reasoning_tokens=1000, latency_s=12.5,
                          ttft_s=0.25)
               for effort in ("none", "medium") for suite in SUITES for i in range(20)]
    return EvalReport(config={"model": "mistral-small-4", "suites": SUITES, "efforts": ["none", "medium"],
                              "samples": 20, "run": "quick", "max_tokens": {"none": 512, "medium": 2048}},
                      started_at="2025-01-01T00:00:00Z", wall_s=123.4,
                      scores=score(results, ["none", "medium"], SUITES),
                      comparisons=compare(results, "none", "medium", SUITES), results=results)


def _shown(width: int) -> str:
    console = Console(width=width, file=io.StringIO(), force_terminal=False, color_system=None)
    render(_report(), console)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_the_table_keeps_whole_columns_that_fit_80_columns() -> None:
    text = _shown(80)
    lines = text.splitlines()
    assert max(map(len, lines)) <= 80
    header = next(line for line in lines if "suite" in line and "effort" in line)
    assert "…" not in text  # no column squeezed to "sui…"
    for name in ("suite", "effort", "accuracy", "solved", "errors", "cut"):  # the first ranked, always there
        assert name in header
    assert any(line.split("│")[1:3] == [" vision ", " medium "] for line in lines if line.startswith("│"))
    assert "medium: 5 of 100 answers cut at max_tokens 2048" in " ".join(text.split())
    wide = fitted_table(_report(), 250)
    assert {c.header for c in wide.columns} == set(RANK)  # room for all: every column


def test_the_progress_bar_shows_an_eta_from_the_tasks_done() -> None:
    now = [0.0]
    out = io.StringIO()
    console = Console(width=80, file=out, force_terminal=True, color_system=None)
    progress = progress_bar(console, get_time=lambda: now[0])
    task = progress.add_task("eval", total=60)
    console.print(progress.get_renderable())
    assert "eta -:--:--" in out.getvalue()  # nothing done yet: no estimate
    for _ in range(2):
        now[0] += 10.0
        progress.advance(task, 10)
    console.print(progress.get_renderable())
    last = out.getvalue().splitlines()[-1]
    assert "20/60" in last and "eta 0:00:40" in last and len(last) <= 80  # 40 left at 1 task a second


@pytest.mark.slow
def test_a_side_whose_every_request_failed_gets_no_verdict_but_its_errors(tiny_random_server: LiveServer,
                                                                          tmp_path: Path) -> None:
    """unimodel refuses reasoning_effort "xhigh" (400): none against xhigh has nothing to compare."""
    code, out, err = eval_cli("--url", tiny_random_server.base_url, "--suite", "math,code", "--reasoning-effort",
                              "none,xhigh", "--samples", "2", "--max-tokens", "4", "--no-plots", "--out", str(tmp_path))
    assert code == 1, out + err  # a whole effort failed
    lines = out.splitlines()
    assert max(map(len, lines)) <= 80 and "…" not in out
    text = " ".join(out.split())
    assert "A/B (xhigh against none): no verdict: every request of xhigh failed" in text
    assert "beats" not in text and "no significant difference" not in text
    assert "4 of 8 requests failed:" in text
    assert "xhigh: 4 × HTTP 400 invalid_value (math, code), e.g. HTTP 400: Invalid request: 'reasoning_effort'" in text
    results = json.loads((tmp_path / "results.json").read_text())
    overall = next(c for c in results["comparisons"] if c["suite"] == "all")
    assert (overall["decided"], overall["significant"], overall["p_value"]) == (False, False, None)
    assert overall["verdict"] == "no verdict: every request of xhigh failed"
    assert (overall["a_errors"], overall["b_errors"], overall["pairs"]) == (0, 4, 4)
    (group,) = results["errors"]
    assert (group["effort"], group["type"], group["count"], group["suites"]) == \
        ("xhigh", "HTTP 400 invalid_value", 4, ["math", "code"])
    assert group["sample"].startswith("HTTP 400: Invalid request: 'reasoning_effort'")
    assert {t["error_type"] for t in results["tasks"] if t["effort"] == "xhigh"} == {"HTTP 400 invalid_value"}
    report = (tmp_path / "report.md").read_text()
    assert "**Verdict:** no verdict: every request of xhigh failed." in report
    assert "| xhigh | HTTP 400 invalid_value | 4 | math, code | HTTP 400: Invalid request:" in report
