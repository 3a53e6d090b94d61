"""The failed requests of a run, grouped by effort and by type, each group with one sample message.

A run in which many requests fail says why in a few lines instead of a column of error counts: "xhigh: 20 ×
HTTP 400 invalid_value (math, code), e.g. Invalid request: 'reasoning_effort': …". The type is the runner's
``error_type`` (the HTTP status and the OpenAI error's code, ``timeout``, ``error frame``, the connection
error's class); the groups of one effort come commonest first. ``results.json`` keeps them under
``"errors"``; the terminal and ``report.md`` print them, and name the side an A/B comparison has no verdict
for because every one of its requests failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from unimodel.evals.runner import TaskResult
from unimodel.evals.tasks.base import shorten

SAMPLE_CHARS = 160


@dataclass(frozen=True)
class ErrorGroup:
    effort: str
    type: str
    count: int
    suites: tuple[str, ...]  # the suites it happened in, in the order first seen
    sample: str  # one of the messages, shortened

    def line(self) -> str:
        return f"{self.effort}: {self.count} × {self.type} ({', '.join(self.suites)}), e.g. {self.sample}"


def group_errors(results: Sequence[TaskResult]) -> list[ErrorGroup]:
    """Per effort (in the order the results have them), per error type, commonest first."""
    groups: dict[tuple[str, str], list[TaskResult]] = {}
    for r in results:
        if r.error is not None:
            groups.setdefault((r.effort, r.error_type or "error"), []).append(r)
    efforts = list(dict.fromkeys(r.effort for r in results))
    ordered = sorted(groups.items(), key=lambda item: (efforts.index(item[0][0]), -len(item[1])))
    return [ErrorGroup(effort=effort, type=kind, count=len(failed),
                       suites=tuple(dict.fromkeys(r.suite for r in failed)),
                       sample=shorten(failed[0].error or "", SAMPLE_CHARS))
            for (effort, kind), failed in ordered]
