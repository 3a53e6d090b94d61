"""One evaluation from start to finish: generate the tasks, run them, score them, compare two efforts.

The preflight checks (``requirements.py``) run before, in the CLI, which decides what a refusal means; their
outcome is passed in and kept in the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Optional

import httpx

from unimodel.evals.requirements import Check
from unimodel.evals.results import EvalReport
from unimodel.evals.runner import EvalConfig, TaskResult, run
from unimodel.evals.sandbox import Limits, network_isolation
from unimodel.evals.scoring import compare, score
from unimodel.evals.tasks import build_suites, generate


def comparison_pair(efforts: Sequence[str], wanted: Optional[Sequence[str]]) -> Optional[tuple[str, str]]:
    """The two efforts to compare: ``wanted`` (checked), else the first and the last; None with one effort."""
    if wanted is None:
        return (efforts[0], efforts[-1]) if len(efforts) > 1 else None
    if len(wanted) != 2 or wanted[0] == wanted[1]:
        raise ValueError("--compare takes two different efforts, e.g. none,high")
    missing = [e for e in wanted if e not in efforts]
    if missing:
        raise ValueError(f"--compare names {', '.join(missing)}, which --reasoning-effort does not run")
    return wanted[0], wanted[1]


async def evaluate(config: EvalConfig, suite_names: Sequence[str], samples: int, seed: int = 0,
                   pair: Optional[tuple[str, str]] = None, limits: Limits = Limits(),
                   on_result: Optional[Callable[[TaskResult], None]] = None,
                   transport: Optional[httpx.AsyncBaseTransport] = None, checks: Sequence[Check] = (),
                   profile: str = "quick") -> EvalReport:
    """Run ``samples`` tasks of each suite under every effort of ``config`` and score them."""
    suites = build_suites(suite_names, limits)
    tasks = generate(suites, samples, seed)
    started_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    began = time.perf_counter()
    results = await run(tasks, suites, config, on_result, transport)
    wall_s = time.perf_counter() - began
    names = list(suites)
    return EvalReport(
        config={"url": config.url, "model": config.model, "suites": names, "efforts": list(config.efforts),
                "run": profile, "samples": samples, "seed": seed, "concurrency": config.concurrency,
                "max_tokens": {e: config.tokens_for(e) for e in config.efforts}, "temperature": config.temperature,
                "compare": list(pair) if pair else None,
                "sandbox": {"cpu_seconds": limits.cpu_seconds, "wall_seconds": limits.wall_seconds,
                            "memory_bytes": limits.memory_bytes,
                            "network_isolation": network_isolation() if "code" in names else None}},
        started_at=started_at, wall_s=wall_s, scores=score(results, config.efforts, names),
        comparisons=compare(results, pair[0], pair[1], names) if pair else [], results=results, checks=list(checks))
