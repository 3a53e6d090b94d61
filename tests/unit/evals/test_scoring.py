"""Wilson intervals and McNemar's exact test against known values; the figures of a group of results."""

from __future__ import annotations

from typing import Optional

import pytest

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
            error: Optional[str] = None, suite: str = "math") -> TaskResult:
    return TaskResult(task_id=task, suite=suite, effort=effort, correct=correct, answer="", detail="", error=error,
                      finish_reason="stop", prompt_tokens=5, completion_tokens=completion,
                      reasoning_tokens=None if completion is None else reasoning, latency_s=None if error else 1.0,
                      ttft_s=None if error else 0.5)


def test_a_group_counts_failures_as_unsolved_and_tokens_only_where_reported() -> None:
    results = [_result("math-000", "high", True), _result("math-001", "high", False, completion=30, reasoning=20),
               _result("math-002", "high", False, completion=None),
               _result("math-003", "high", False, completion=None, error="HTTP 503: busy")]
    s = score_group("high", "math", results)
    assert (s.tasks, s.solved, s.errors, s.with_usage, s.completion_tokens) == (4, 1, 1, 2, 40)
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
