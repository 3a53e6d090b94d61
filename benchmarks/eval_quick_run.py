"""How long the README's `unimodel eval` example takes against `unimodel serve --model tiny-random`.

Starts the embedded engine on tiny-random on a free loopback port (as the README's first command does), runs
the README's quick eval (the default quick run: 5 tasks per suite, max_tokens per effort) and prints the wall
time. Extra arguments go to `unimodel eval` after the README's, e.g. `--full` or `--samples 2 --max-tokens 4096`
(the old defaults, for a before/after figure).

    python benchmarks/eval_quick_run.py [--smoke] [-- EXTRA EVAL FLAGS]

Measured on a 2-core CPU box (issue 24): the quick run of math,json,tools,code under none,low,high, 60 requests,
took 2 min 15 s; the old default (4,096 max_tokens) took 6 min 24 s for 30 requests, about 2 h at the README's
old 50 tasks per suite.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

from _processes import ENV, ROOT, processes

README_EVAL = ["--model", "tiny-random", "--suite", "math,json,tools,code"]  # the README's quick example, less --url and --out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="one task, 8 tokens: checks the code path (CI)")
    ap.add_argument("extra", nargs="*", help="more `unimodel eval` flags (after --)")
    args = ap.parse_args()
    extra = ["--samples", "1", "--max-tokens", "8", *args.extra] if args.smoke else args.extra
    with processes() as started, tempfile.TemporaryDirectory() as out:
        url = started.unimodel("--engine", "local", "--model", "tiny-random")
        command = [sys.executable, "-m", "unimodel.cli", "eval", "--url", url, *README_EVAL, "--out", out,
                   "--no-plots", *extra]
        began = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, env={**ENV, "COLUMNS": "100"}, capture_output=True, text=True)
        wall = time.perf_counter() - began
        print(done.stdout[-4000:].rstrip())
        if done.stderr.strip():
            print(done.stderr[-2000:].rstrip())
        print(f"unimodel eval {' '.join(README_EVAL + extra)}: exit {done.returncode}, {wall:.1f} s wall "
              f"({wall / 60:.1f} min)")


if __name__ == "__main__":
    main()
