"""Wilson intervals and McNemar's exact test against known values; the figures of a group of results."""

from __future__ import annotations

from typing import Optional

import pytest

from unimodel.evals.failures import group_errors
from unimodel.evals.runner import TaskResult
from unimodel.evals.scoring import ALL, compare, mcnemar_exact, score, score_group, wilson_interval


def test_wilson_interval_known_values() -> None:
    # textbook values (Newcombe 1998; Agresti & Coull 1998): 0/10, 5/10, 15/50 at 95 %
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=5e-5)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=5e-5)
    assert wilson_interval(15, 50) == pytest.approx((0.1910, 0.4375), abs=5e-5)
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("n", range(1, 200))
def test_wilson_interval_holds_the_estimate_and_is_exact_at_the_ends(n: int) -> None:
    assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0  # no rounding below 0 or above 1
    for solved in {0, 1, n // 2, n - 1, n}:
        low, high = wilson_interval(solved, n)
        assert 0.0 <= low <= solved / n <= high <= 1.0


def test_mcnemar_exact_known_values() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 20) == 2 / 2**20
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert mcnemar_exact(5, 5) == 1.0  # capped: the doubled tail passes 1
    assert mcnemar_exact(0, 4) == 0.125  # four discordant tasks can never be significant
    assert 0 < mcnemar_exact(200, 800) < 1e-80  # large counts stay exact rather than underflowing to nonsense


def _result(task: str, effort: str, correct: bool, completion: Optional[int] = 10, reasoning: int = 4,
            error: Optional[str] = None, suite: str = "math", error_type: Optional[str] = None,
            finish_reason: str = "stop") -> TaskResult:
    return TaskResult(task_id=task, suite=suite, effort=effort, correct=correct, answer="", detail="", error=error,
                      error_type=error_type or (error and "HTTP 400"), finish_reason=None if error else finish_reason,
                      prompt_tokens=5, completion_tokens=completion,
                      reasoning_tokens=None if completion is None else reasoning, latency_s=None if error else 1.0,
                      ttft_s=None if error else 0.5)


def test_a_group_counts_failures_as_unsolved_and_tokens_only_where_reported() -> None:
    results = [_result("math-000", "high", True), _result("math-001", "high", False, completion=30, reasoning=20,
                                                          finish_reason="length"),
               _result("math-002", "high", False, completion=None),
               _result("math-003", "high", False, completion=None, error="HTTP 503: busy")]
    s = score_group("high", "math", results)
    assert (s.tasks, s.solved, s.errors, s.truncated, s.with_usage, s.completion_tokens) == (4, 1, 1, 1, 2, 40)
    assert s.accuracy == 0.25
    assert s.tokens_per_solved == 40.0
    assert s.mean_reasoning_tokens == 12.0 and s.mean_answer_tokens == 8.0
    assert s.latency_s is not None and s.latency_s.mean == 1.0 and s.latency_s.p95 == 1.0  # the failure left out
    nothing = score_group("none", "math", [_result("math-000", "none", False)])
    assert nothing.tokens_per_solved is None and nothing.accuracy == 0.0


def test_comparison_is_paired_by_task() -> None:
    results = [_result(f"math-{i:03d}", "none", i < 2) for i in range(10)] + \
              [_result(f"math-{i:03d}", "high", 1 <= i < 9) for i in range(10)]
    by_suite = {c.suite: c for c in compare(results, "none", "high", ["math"])}
    c = by_suite["math"]
    assert (c.pairs, c.a_solved, c.b_solved, c.a_only, c.b_only) == (10, 2, 8, 1, 7)
    assert c.difference == pytest.approx(0.6)
    assert c.p_value == pytest.approx(2 * (1 + 8) / 256)
    assert not c.significant and "no significant difference" in c.verdict
    assert by_suite[ALL] == c.__class__(**{**c.__dict__, "suite": ALL})
    scores = score(results, ["none", "high"], ["math"])
    assert [(s.effort, s.suite, s.solved) for s in scores] == [("none", "math", 2), ("none", ALL, 2),
                                                               ("high", "math", 8), ("high", ALL, 8)]


def _one_side_failed(failed: str, other_solves: int = 10) -> list[TaskResult]:
    """Ten math tasks under none and high; every request of ``failed`` refused, the other solving some."""
    good = "high" if failed == "none" else "none"
    return [_result(f"math-{i:03d}", good, i < other_solves) for i in range(10)] + \
           [_result(f"math-{i:03d}", failed, False, completion=None, error="HTTP 400: Invalid request: effort",
                    error_type="HTTP 400 invalid_value") for i in range(10)]


@pytest.mark.parametrize("failed", ["none", "high"])
def test_no_verdict_when_every_request_of_a_side_failed(failed: str) -> None:
    """Ten solved against ten refused would be "significant" (p = 0.002) if a refusal counted as a wrong
    answer; it says nothing about the model, so there is no verdict, only which side failed."""
    for c in compare(_one_side_failed(failed), "none", "high", ["math"]):
        assert not c.decided and not c.significant and c.p_value is None
        assert c.verdict == f"no verdict: every request of {failed} failed"
        assert "beats" not in c.verdict and "difference" not in c.verdict
        assert (c.a_errors, c.b_errors) == ((10, 0) if failed == "none" else (0, 10))


def test_no_verdict_when_both_sides_failed_or_nothing_is_paired() -> None:
    both = [_result(f"math-{i:03d}", e, False, completion=None, error="HTTP 503: busy", error_type="HTTP 503")
            for e in ("none", "high") for i in range(3)]
    (c, _) = compare(both, "none", "high", ["math"])
    assert c.verdict == "no verdict: every request of none and high failed" and not c.significant
    (empty, _) = compare([], "none", "high", ["math"])
    assert empty.verdict == "no verdict: no task ran under both none and high" and empty.p_value is None


def test_one_success_on_each_side_is_enough_for_a_verdict() -> None:
    results = _one_side_failed("high", other_solves=10)
    results[-1] = _result("math-009", "high", False)  # one request of high answered (wrongly)
    (c, _) = compare(results, "none", "high", ["math"])
    assert c.decided and c.b_errors == 9 and c.significant and c.verdict.startswith("none beats high")


def test_errors_are_grouped_by_effort_and_type_with_a_sample() -> None:
    results = _one_side_failed("high") + [
        _result("code-000", "high", False, completion=None, error="timed out after 5 s", error_type="timeout",
                suite="code"),
        _result("code-001", "none", False, completion=None, error="HTTP 400: Invalid request: effort",
                error_type="HTTP 400 invalid_value", suite="code")]
    groups = group_errors(results)
    assert [(g.effort, g.type, g.count, g.suites) for g in groups] == [
        ("none", "HTTP 400 invalid_value", 1, ("code",)), ("high", "HTTP 400 invalid_value", 10, ("math",)),
        ("high", "timeout", 1, ("code",))]
    assert groups[1].sample == "HTTP 400: Invalid request: effort"
    assert groups[1].line() == "high: 10 × HTTP 400 invalid_value (math), e.g. HTTP 400: Invalid request: effort"
