"""Every script of benchmarks/ runs its code path end to end in `--smoke` mode (a few requests) and prints its table.

The figures themselves are not checked (they are measured by running the scripts in full, never in tests);
what is: the script exits 0, prints its table's header, and, where it counts them, met no unexpected error.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

# script, text its table's header holds
SCRIPTS = [
    ("gateway_overhead.py", "rate/direct"),
    ("local_engine.py", "ours tok/s"),
    ("reasoning_effort.py", "think p50"),
    ("bench_vs_guidellm.py", "figure (median of rounds)"),
    ("soak.py", "after warm-up"),
    ("pool.py", "goodput"),
    ("pool_fairness.py", "p95 / alone"),
    ("eval_quick_run.py", "s wall"),
]


def run_smoke(script: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--smoke"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{script} --smoke exited {result.returncode}:\n{output[-4000:]}"
    assert "Traceback" not in output, output[-4000:]
    return result.stdout


@pytest.mark.parametrize(("script", "header"), SCRIPTS, ids=[s for s, _ in SCRIPTS])
def test_the_script_runs_in_smoke_mode_and_prints_its_table(script: str, header: str) -> None:
    out = run_smoke(script)
    assert header in out, out[-4000:]
    if script == "soak.py":  # both soaks ran, and every answer was one the mix expects
        rows = [line.split() for line in out.splitlines() if line.startswith("unexpected errors")]
        assert len(rows) == 2 and all(row[2] == "0" for row in rows), out[-4000:]
        assert "UNEXPECTED" not in out, out[-4000:]
    if script == "pool.py":  # every (workload, policy) row ran its requests without an error
        rows = [line.split() for line in out.splitlines() if line.startswith(("multi-turn", "no-reuse"))]
        assert len(rows) == 4 and all(row[3] == "0" for row in rows), out[-4000:]
