"""The suites: each generates seeded tasks with known answers and checks a reply.

``SUITE_NAMES`` lists them in report order; :func:`build_suites` returns them by name (the code suite takes
the sandbox's limits) and :func:`generate` the tasks of several suites at once.
"""

from __future__ import annotations

from collections.abc import Sequence

from unimodel.evals.sandbox import Limits
from unimodel.evals.tasks import code, json_extract, math, tools, vision
from unimodel.evals.tasks.base import Reply, Suite, Task, ToolCall, Verdict

SUITE_NAMES = ("math", "json", "tools", "code", "vision")

__all__ = ["SUITE_NAMES", "Reply", "Suite", "Task", "ToolCall", "Verdict", "build_suites", "generate"]


def build_suites(names: Sequence[str], limits: Limits = Limits()) -> dict[str, Suite]:
    """The named suites, in the order given; an unknown name raises ``ValueError`` naming the known ones."""
    known = {"math": math.SUITE, "json": json_extract.SUITE, "tools": tools.SUITE, "code": code.suite(limits),
             "vision": vision.SUITE}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown suite {', '.join(map(repr, unknown))}; the suites are {', '.join(SUITE_NAMES)}")
    return {name: known[name] for name in names}


def generate(suites: dict[str, Suite], samples: int, seed: int) -> list[Task]:
    """``samples`` tasks of every suite, suite by suite."""
    return [task for suite in suites.values() for task in suite.generate(samples, seed)]
