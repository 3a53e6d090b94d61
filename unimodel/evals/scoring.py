"""Turn task results into figures: accuracy with its interval, token costs, latency, and the A/B verdict.

- **Accuracy**: solved / tasks, a failed request counting as not solved; its 95 % interval is **Wilson's**
  score interval, which stays inside [0, 1] and keeps its coverage at 0 or n solved and for small n, where
  the normal approximation does not.
- **Tokens**: means over the requests that reported ``usage``; **tokens per solved task** = all completion
  tokens of the group (reasoning and answer, solved or not: what solving cost) / tasks solved, undefined
  (``None``) when nothing was solved.
- **Latency and TTFT**: mean, median and 95th percentile over the requests that did not fail.
- **A/B between two efforts**: **McNemar's exact test**. Both efforts answer the same tasks, so the outcomes
  are paired; only the tasks that one effort solved and the other did not carry information about which is
  better, and under "no difference" each such task is equally likely to go either way, so the count is
  Binomial(discordant, 1/2) and the two-sided p-value is exact. A two-proportion z-test would treat the two
  runs as independent samples, ignore the pairing and lose power; the chi-squared form of McNemar is
  unreliable with the few discordant tasks a small run has. Significant means p < 0.05.
- **No verdict** when every paired request of one effort failed (or there are no pairs): its zero solved tasks
  say nothing about the model, only that the endpoint refused (an effort it does not take, a key's cap), so
  neither a p-value nor "better/worse" is given; the report says which side failed and why
  (``failures.py``).
- **Truncated**: answers cut by ``max_tokens`` (``finish_reason: length``), counted per group, since an effort
  that runs out of room loses tasks it might have solved.

Written by hand over ``statistics`` and ``math.comb`` (both formulas are a few lines), so the client needs no
scientific stack.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

from unimodel.evals.runner import TaskResult

ALPHA = 0.05
Z95 = statistics.NormalDist().inv_cdf(0.975)
ALL = "all"  # the suite name of the figures over every suite


def wilson_interval(solved: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for ``solved`` of ``n``; (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = solved / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low = 0.0 if solved == 0 else max(0.0, centre - half)  # exact at the ends, where rounding could stray
    high = 1.0 if solved == n else min(1.0, centre + half)
    return min(low, p), max(high, p)


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the two discordant counts (1.0 when there are none)."""
    discordant = a_only + b_only
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, i) for i in range(min(a_only, b_only) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**discordant)))


def _percentile(values: Sequence[float], pct: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


@dataclass(frozen=True)
class Spread:
    mean: float
    p50: float
    p95: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Optional["Spread"]:
        if not values:
            return None
        return cls(statistics.fmean(values), _percentile(values, 50), _percentile(values, 95))


@dataclass(frozen=True)
class Score:
    effort: str
    suite: str  # a suite's name, or "all"
    tasks: int
    solved: int
    errors: int
    truncated: int  # answers cut by max_tokens (finish_reason "length")
    accuracy: float
    ci_low: float
    ci_high: float
    with_usage: int  # requests that reported usage
    completion_tokens: int  # over those requests
    mean_reasoning_tokens: Optional[float]
    mean_answer_tokens: Optional[float]
    tokens_per_solved: Optional[float]
    latency_s: Optional[Spread]
    ttft_s: Optional[Spread]


def score_group(effort: str, suite: str, results: Sequence[TaskResult]) -> Score:
    n = len(results)
    solved = sum(r.correct for r in results)
    low, high = wilson_interval(solved, n)
    counted = [r for r in results if r.completion_tokens is not None]
    completion = sum(r.completion_tokens or 0 for r in counted)
    ok = [r for r in results if r.error is None]
    return Score(
        effort=effort, suite=suite, tasks=n, solved=solved, errors=sum(r.error is not None for r in results),
        truncated=sum(r.error is None and r.finish_reason == "length" for r in results),
        accuracy=solved / n if n else 0.0, ci_low=low, ci_high=high, with_usage=len(counted),
        completion_tokens=completion,
        mean_reasoning_tokens=statistics.fmean(r.reasoning_tokens or 0 for r in counted) if counted else None,
        mean_answer_tokens=statistics.fmean(r.answer_tokens or 0 for r in counted) if counted else None,
        tokens_per_solved=completion / solved if solved and counted else None,
        latency_s=Spread.of([r.latency_s for r in ok if r.latency_s is not None]),
        ttft_s=Spread.of([r.ttft_s for r in ok if r.ttft_s is not None]),
    )


def score(results: Sequence[TaskResult], efforts: Sequence[str], suites: Sequence[str]) -> list[Score]:
    """Per effort: each suite, then all suites together."""
    out = []
    for effort in efforts:
        mine = [r for r in results if r.effort == effort]
        out.extend(score_group(effort, s, [r for r in mine if r.suite == s]) for s in suites)
        out.append(score_group(effort, ALL, mine))
    return out


@dataclass(frozen=True)
class Comparison:
    suite: str
    a: str
    b: str
    pairs: int
    a_solved: int
    b_solved: int
    a_only: int  # solved under a, not under b
    b_only: int
    a_errors: int  # paired requests under a that failed
    b_errors: int
    difference: float  # accuracy of b minus accuracy of a
    p_value: Optional[float]  # None without a verdict
    significant: bool

    @property
    def decided(self) -> bool:
        """Whether there is a verdict: some pairs, and each side with at least one request that did not fail."""
        return self.pairs > 0 and self.a_errors < self.pairs and self.b_errors < self.pairs

    @property
    def verdict(self) -> str:
        if not self.pairs:
            return f"no verdict: no task ran under both {self.a} and {self.b}"
        if not self.decided:
            failed = " and ".join(e for e, n in ((self.a, self.a_errors), (self.b, self.b_errors)) if n == self.pairs)
            return f"no verdict: every request of {failed} failed"
        if not self.significant:
            return f"no significant difference between {self.a} and {self.b} (McNemar exact p = {self.p_value:.3g})"
        better, worse = (self.b, self.a) if self.difference > 0 else (self.a, self.b)
        return (f"{better} beats {worse} by {abs(self.difference) * 100:.1f} points "
                f"(McNemar exact p = {self.p_value:.3g} < {ALPHA})")


def compare_group(suite: str, a: str, b: str, results: Sequence[TaskResult]) -> Comparison:
    under_a = {r.task_id: r.correct for r in results if r.effort == a}
    under_b = {r.task_id: r.correct for r in results if r.effort == b}
    paired = sorted(set(under_a) & set(under_b))
    a_only = sum(under_a[t] and not under_b[t] for t in paired)
    b_only = sum(under_b[t] and not under_a[t] for t in paired)
    a_solved = sum(under_a[t] for t in paired)
    b_solved = sum(under_b[t] for t in paired)
    failed_a = {r.task_id for r in results if r.effort == a and r.error is not None}
    failed_b = {r.task_id for r in results if r.effort == b and r.error is not None}
    a_errors, b_errors = len(failed_a.intersection(paired)), len(failed_b.intersection(paired))
    decided = bool(paired) and a_errors < len(paired) and b_errors < len(paired)
    p = mcnemar_exact(a_only, b_only) if decided else None
    return Comparison(suite=suite, a=a, b=b, pairs=len(paired), a_solved=a_solved, b_solved=b_solved,
                      a_only=a_only, b_only=b_only, a_errors=a_errors, b_errors=b_errors,
                      difference=(b_solved - a_solved) / len(paired) if paired else 0.0,
                      p_value=p, significant=p is not None and p < ALPHA)


def compare(results: Sequence[TaskResult], a: str, b: str, suites: Sequence[str]) -> list[Comparison]:
    """Effort ``b`` against effort ``a``, task by task: each suite, then all suites together."""
    out = [compare_group(s, a, b, [r for r in results if r.suite == s]) for s in suites]
    out.append(compare_group(ALL, a, b, results))
    return out
