"""``unimodel eval`` end to end: its figures checked exactly against a scripted upstream whose right answers
and token costs are known, directly and through a unimodel server in front of it, and every figure produced
against the local engine on tiny-random (where nearly nothing is solved)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from tests.support.live_server import LiveServer
from tests.support.scripted_evaluator import MODEL, SHARE, THINK, Answerer, evaluator_upstream
from tests.support.scripted_upstream import ScriptedUpstream
from unimodel.compose import build_engine
from unimodel.config import Settings
from unimodel.evals.cli import register
from unimodel.evals.scoring import wilson_interval
from unimodel.evals.tasks import SUITE_NAMES, build_suites, generate

pytestmark = pytest.mark.slow

SAMPLES = 10
TASKS = {t.id: t for t in generate(build_suites(SUITE_NAMES), SAMPLES, seed=0)}


def eval_cli(*args: str) -> tuple[int, str, str]:
    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:  # a second command, so `eval` is a subcommand as in the real CLI
        """Unused."""

    result = CliRunner().invoke(app, ["eval", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture()
def evaluator() -> Iterator[tuple[ScriptedUpstream, Answerer]]:
    upstream, answerer = evaluator_upstream(list(TASKS.values()))
    with upstream:
        yield upstream, answerer


def expected_score(upstream_effort: str, suites: list[str]) -> dict[str, Any]:
    """What the scripted upstream's rules make of ``SAMPLES`` tasks of each suite at one effort."""
    answer_tokens = {s: 2 if s == "tools" else 1 for s in suites}  # a tool call is two frames: name, arguments
    solved = SHARE[upstream_effort] * len(suites)
    completion = sum(SAMPLES * (THINK[upstream_effort] + answer_tokens[s]) for s in suites)
    tasks = SAMPLES * len(suites)
    return {"tasks": tasks, "solved": solved, "errors": 0, "accuracy": solved / tasks,
            "ci_low": wilson_interval(solved, tasks)[0], "ci_high": wilson_interval(solved, tasks)[1],
            "with_usage": tasks, "completion_tokens": completion, "mean_reasoning_tokens": THINK[upstream_effort],
            "mean_answer_tokens": sum(SAMPLES * answer_tokens[s] for s in suites) / tasks,
            "tokens_per_solved": completion / solved}


def check_exact(results: dict[str, Any], efforts_upstream: dict[str, str]) -> None:
    """Every score, the A/B comparison of none and high, and every task's verdict, as the rules say."""
    scores = {(s["effort"], s["suite"]): s for s in results["scores"]}
    assert len(scores) == len(efforts_upstream) * (len(SUITE_NAMES) + 1)
    for effort, upstream_effort in efforts_upstream.items():
        for suite in SUITE_NAMES:
            got = scores[(effort, suite)]
            assert {k: got[k] for k in expected_score(upstream_effort, [suite])} == \
                expected_score(upstream_effort, [suite]), (effort, suite)
            assert got["latency_s"]["p95"] >= got["latency_s"]["p50"] > 0 and got["ttft_s"]["mean"] > 0
        got = scores[(effort, "all")]
        assert {k: got[k] for k in expected_score(upstream_effort, list(SUITE_NAMES))} == \
            expected_score(upstream_effort, list(SUITE_NAMES)), effort
    right = {e: {t.id for t in TASKS.values() if Answerer.right(t, u)} for e, u in efforts_upstream.items()}
    assert len(results["tasks"]) == len(TASKS) * len(efforts_upstream)
    for task in results["tasks"]:
        assert task["correct"] == (task["task_id"] in right[task["effort"]]), task
        assert task["error"] is None and task["prompt_tokens"] == 11
    comparisons = {c["suite"]: c for c in results["comparisons"]}
    assert set(comparisons) == {*SUITE_NAMES, "all"}
    b_only = (SHARE[efforts_upstream["high"]] - SHARE[efforts_upstream["none"]])
    for suite in SUITE_NAMES:  # 4 tasks each: even all four going one way is p = 0.125
        c = comparisons[suite]
        assert (c["a"], c["b"], c["pairs"], c["a_only"], c["b_only"]) == ("none", "high", SAMPLES, 0, b_only)
        assert c["p_value"] == 2 / 2**b_only and not c["significant"]
    overall = comparisons["all"]
    assert (overall["pairs"], overall["a_only"], overall["b_only"]) == (50, 0, 5 * b_only)
    assert overall["p_value"] == 2 / 2 ** (5 * b_only) and overall["significant"]
    assert overall["difference"] == 5 * b_only / 50
    assert overall["verdict"] == f"high beats none by {5 * b_only * 2:.1f} points (McNemar exact p = " \
                                 f"{2 / 2 ** (5 * b_only):.3g} < 0.05)"


def test_scores_against_the_scripted_upstream_are_exact(evaluator: tuple[ScriptedUpstream, Answerer],
                                                        tmp_path: Path) -> None:
    upstream, answerer = evaluator
    code, out, err = eval_cli("--url", upstream.base_url, "--suite", ",".join(SUITE_NAMES), "--reasoning-effort",
                              "none,low,high", "--samples", str(SAMPLES), "--concurrency", "8", "--out",
                              str(tmp_path))
    assert code == 0, out + err
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["schema"] == "unimodel-eval/2"
    assert results["config"]["model"] == MODEL  # found on /v1/models, as --model was not given
    assert results["config"]["compare"] == ["none", "high"]
    check_exact(results, {"none": "none", "low": "low", "high": "high"})
    assert sorted(set(answerer.efforts_seen)) == ["high", "low", "none"]
    report = (tmp_path / "report.md").read_text()
    assert "| none | all | 30.0% [" in report and "| high | all | 70.0% [" in report
    assert "**Verdict:** high beats none by 40.0 points" in report
    assert "![accuracy per effort and suite](accuracy.png)" in report
    for plot in ("accuracy.png", "tokens_per_solved.png"):
        data = (tmp_path / plot).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert "high beats none by 40.0 points" in out and "results.json" in out


def test_scores_through_our_server_are_exact(evaluator: tuple[ScriptedUpstream, Answerer], tmp_path: Path) -> None:
    """The server maps efforts onto what the model knows: low is high with a thinking budget, far above the
    16 tokens the upstream thinks, so low scores exactly as high does."""
    upstream, answerer = evaluator
    settings = Settings(engine="upstream", upstream=upstream.base_url)
    with LiveServer(settings, build_engine(settings)) as server:
        code, out, err = eval_cli("--url", server.base_url, "--model", MODEL, "--reasoning-effort", "none,low,high",
                                  "--samples", str(SAMPLES), "--out", str(tmp_path), "--no-plots")
    assert code == 0, out + err
    check_exact(json.loads((tmp_path / "results.json").read_text()), {"none": "none", "low": "high", "high": "high"})
    assert sorted(set(answerer.efforts_seen)) == ["high", "none"]
    assert not (tmp_path / "accuracy.png").exists()


def test_a_run_in_which_every_request_fails_still_reports_and_exits_1(
        evaluator: tuple[ScriptedUpstream, Answerer], tmp_path: Path) -> None:
    """Suites that need nothing of the endpoint send no preflight request: the run's own requests fail."""
    upstream, _ = evaluator
    code, out, err = eval_cli("--url", upstream.base_url, "--model", "no-such-model", "--suite", "math,code",
                              "--samples", "2", "--reasoning-effort", "high", "--out", str(tmp_path), "--no-plots")
    assert code == 1, out + err
    results = json.loads((tmp_path / "results.json").read_text())
    assert [t["error"] for t in results["tasks"]] == ["HTTP 404: The model `no-such-model` does not exist."] * 4
    assert results["comparisons"] == []  # one effort: nothing to compare
    overall = next(s for s in results["scores"] if s["suite"] == "all")
    assert (overall["tasks"], overall["solved"], overall["errors"], overall["accuracy"]) == (4, 0, 4, 0.0)
    assert overall["latency_s"] is None and overall["mean_reasoning_tokens"] is None
    assert "4 of 4 requests failed" in out
    assert "high: 4 × HTTP 404 NotFoundError (math, code), e.g. HTTP 404: The model `no-such-model` does not " \
           "exist." in " ".join(out.split())


def test_a_suite_whose_check_fails_stops_the_run_before_it_starts(evaluator: tuple[ScriptedUpstream, Answerer],
                                                                 tmp_path: Path) -> None:
    upstream, _ = evaluator
    code, out, err = eval_cli("--url", upstream.base_url, "--model", "no-such-model", "--suite", "math,tools",
                              "--out", str(tmp_path), "--no-plots")
    assert code == 2, out + err
    assert err == ("unimodel: error: could not check that no-such-model can run the tools suite, which needs a model "
                   "that takes tool definitions (tools): 404: The model `no-such-model` does not exist.\n")
    assert not (tmp_path / "results.json").exists()


def _every_figure(score: dict[str, Any]) -> None:
    for key in ("accuracy", "ci_low", "ci_high", "mean_reasoning_tokens", "mean_answer_tokens"):
        assert isinstance(score[key], (int, float)), (key, score)
    assert score["with_usage"] == score["tasks"] - score["errors"] and score["completion_tokens"] > 0
    assert (score["tokens_per_solved"] is None) == (score["solved"] == 0)
    for key in ("latency_s", "ttft_s"):
        assert all(score[key][k] > 0 for k in ("mean", "p50", "p95")), (key, score)


@pytest.mark.parametrize("model, suites", [("tiny-random", "math,json,tools,code"),
                                           ("tiny-random-vision", "vision")])
def test_every_figure_against_the_local_engine(model: str, suites: str, tiny_cache_dir: Path,
                                               tmp_path: Path) -> None:
    settings = Settings(engine="local", model=model, cache_dir=tiny_cache_dir, device="cpu", dtype="float32")
    with LiveServer(settings, build_engine(settings)) as server:
        code, out, err = eval_cli("--url", server.base_url, "--suite", suites, "--reasoning-effort", "none,high",
                                  "--samples", "2", "--max-tokens", "16", "--concurrency", "4", "--out", str(tmp_path))
    assert code == 0, out + err
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["model"] == model
    for score in results["scores"]:
        _every_figure(score)
        assert score["accuracy"] <= 0.5  # random weights: (nearly) nothing is solved
        assert score["truncated"] == score["tasks"]  # nor does it stop before 16 tokens
    assert not [t for t in results["tasks"] if t["error"]] and results["errors"] == []
    assert [c["suite"] for c in results["checks"]] == [s for s in suites.split(",") if s in ("json", "tools", "vision")]
    assert all(c["ok"] for c in results["checks"])
    assert {c["suite"] for c in results["comparisons"]} == {*suites.split(","), "all"}
    assert (tmp_path / "accuracy.png").exists()
    solved = any(s["solved"] for s in results["scores"])
    assert (tmp_path / "tokens_per_solved.png").exists() == solved  # no chart of nothing
