"""The outcome of one evaluation and its ``results.json``.

``results.json`` (``"schema": "unimodel-eval/2"``: ``max_tokens`` per effort, ``truncated``, ``checks``,
``errors``, and a comparison without a verdict, are new in 2), every time in seconds, every token count from the
endpoint's ``usage``, ``null`` where a figure is undefined (no usage reported, nothing solved, every request
failed):

```
{
  "schema": "unimodel-eval/2",
  "started_at": "2025-01-01T12:00:00Z", "wall_s": 41.2,
  "config": {"url", "model", "suites": [...], "efforts": [...], "run": "quick" | "full", "samples", "seed",
             "concurrency", "max_tokens": {effort: n}, "temperature", "compare": [A, B] | null,
             "sandbox": {"cpu_seconds", "wall_seconds", "memory_bytes", "network_isolation"}},
  "checks": [            # the preflight request of each suite that needs something (requirements.py)
    {"suite", "needs": [...], "model", "ok", "refused", "answer"}],   # a refused suite here was skipped
  "scores": [            # per effort: one row per suite, then one with "suite": "all"
    {"effort", "suite", "tasks", "solved", "errors", "truncated", "accuracy", "ci_low", "ci_high",  # Wilson 95 %
     "with_usage", "completion_tokens", "mean_reasoning_tokens", "mean_answer_tokens", "tokens_per_solved",
     "latency_s": {"mean", "p50", "p95"} | null, "ttft_s": {"mean", "p50", "p95"} | null}],
  "comparisons": [       # B against A, per suite then "all"; empty with one effort
    {"suite", "a", "b", "pairs", "a_solved", "b_solved", "a_only", "b_only", "a_errors", "b_errors",
     "difference",                                                                        # acc(B) - acc(A)
     "p_value" | null, "significant", "decided", "verdict"}],   # McNemar exact; null, false: every request of
                                                                # a side failed ("no verdict: …")
  "errors": [            # the failed requests by effort and type (failures.py)
    {"effort", "type", "count", "suites": [...], "sample"}],
  "tasks": [             # one per task per effort
    {"task_id", "suite", "effort", "correct", "answer", "detail", "error", "error_type", "finish_reason",
     "prompt_tokens", "completion_tokens", "reasoning_tokens", "answer_tokens", "latency_s", "ttft_s"}]
}
```
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from unimodel.evals.failures import ErrorGroup, group_errors
from unimodel.evals.requirements import Check
from unimodel.evals.runner import TaskResult
from unimodel.evals.scoring import ALL, Comparison, Score

SCHEMA = "unimodel-eval/2"


@dataclass(frozen=True)
class EvalReport:
    config: dict[str, Any]
    started_at: str
    wall_s: float
    scores: list[Score]
    comparisons: list[Comparison]
    results: list[TaskResult]
    checks: list[Check] = field(default_factory=list)

    @property
    def errors(self) -> list[ErrorGroup]:
        return group_errors(self.results)

    @property
    def skipped(self) -> list[Check]:
        """The suites left out because the endpoint refused what they need (``--skip-unsupported``)."""
        return [c for c in self.checks if not c.ok]

    def score(self, effort: str, suite: str = ALL) -> Score:
        return next(s for s in self.scores if s.effort == effort and s.suite == suite)

    def comparison(self, suite: str = ALL) -> Optional[Comparison]:
        return next((c for c in self.comparisons if c.suite == suite), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "started_at": self.started_at,
            "wall_s": self.wall_s,
            "config": self.config,
            "checks": [c.to_dict() for c in self.checks],
            "scores": [dataclasses.asdict(s) for s in self.scores],
            "comparisons": [{**dataclasses.asdict(c), "decided": c.decided, "verdict": c.verdict}
                            for c in self.comparisons],
            "errors": [dataclasses.asdict(e) for e in self.errors],
            "tasks": [{**dataclasses.asdict(r), "answer_tokens": r.answer_tokens} for r in self.results],
        }

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
