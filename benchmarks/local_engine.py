"""Decode throughput of the embedded engine served over HTTP, against transformers' own continuous batching.

One run, side by side, on the same checkpoint (default tiny-random, CPU), greedy, ``ignore_eos`` so every
stream generates exactly ``--tokens`` (checked against the usage chunk):

* ours: ``unimodel serve`` as a subprocess, driven over SSE by httpx clients, one connection per stream;
  aggregate tokens/s = completion tokens over the round's wall time (prefill, HTTP and SSE included);
* theirs: ``model.init_continuous_batching(...)`` in process, its cache sized by hand
  (``_transformers_batching.py`` says why), run by the interpreter of a venv pinned to a transformers version
  whose manager works on Mistral4 on CPU (5.24's raises on the MLA cache); the script creates that venv when it is
  missing (``pip install torch==2.13.0 transformers==5.23.0 safetensors``) and prints which version ran.

Levels are measured in interleaved rounds after a warm-up round, and the best round per level is reported
(a shared CPU machine is noisy). Then the inter-token latency of running streams while a long (~8K-token)
prompt is admitted, with the prompt prefilled in one piece (``--max-prefill-tokens`` above its length) and in
chunks (the default), each on its own server. Figures only: nothing is asserted. The last line reads
``ratio ours/transformers at 16 streams = X.XX``.

    python benchmarks/local_engine.py [--model tiny-random] [--tokens 128] [--streams 1,4,16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _processes import pct, processes
from _sse_streams import StreamResult, stream_chat

PROMPT_WORDS = "the quick brown fox jumps over the lazy dog while a cat watches from the old stone wall".split()
TRANSFORMERS_VENV = Path("/tmp/unimodel-tf523-venv")
TRANSFORMERS_PINS = ["torch==2.13.0", "transformers==5.23.0", "safetensors"]


def prompt(i: int, words: int | None = None) -> str:
    count = words if words is not None else 8 + i % 7
    return f"Story {i}: " + " ".join(PROMPT_WORDS[(i + k) % len(PROMPT_WORDS)] for k in range(count))


async def ours_round(base: str, model: str, streams: int, tokens: int) -> tuple[float, list[int]]:
    t0 = time.perf_counter()
    results = await asyncio.gather(*(stream_chat(base, model, prompt(i), tokens) for i in range(streams)))
    wall = time.perf_counter() - t0
    return sum(r.completion_tokens for r in results) / wall, [r.prompt_tokens for r in results]


async def measure_ours(base: str, model: str, levels: list[int], tokens: int,
                       repeat: int) -> tuple[dict[int, list[float]], list[int]]:
    """tok/s per round per level, and the prompt lengths of requests 0..max(levels)-1 (for theirs)."""
    _, lens = await ours_round(base, model, max(levels), min(32, tokens))  # warm-up
    trials: dict[int, list[float]] = {n: [] for n in levels}
    for _ in range(repeat):
        for n in levels:
            trials[n].append((await ours_round(base, model, n, tokens))[0])
    return trials, lens


def transformers_python(path: Path) -> Path:
    """The pinned venv's interpreter, creating the venv first when it is missing."""
    python = path / "bin" / "python"
    if not python.exists():
        print(f"creating {path} ({' '.join(TRANSFORMERS_PINS)}) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *TRANSFORMERS_PINS], check=True)
    return python


def measure_theirs(python: Path, checkpoint: Path, lens: list[int], levels: list[int], tokens: int,
                   repeat: int) -> tuple[str, dict[int, list[float]]]:
    script = Path(__file__).with_name("_transformers_batching.py")
    done = subprocess.run(
        [str(python), str(script), str(checkpoint), "--prompt-lens", ",".join(map(str, lens)), "--tokens",
         str(tokens), "--streams", ",".join(map(str, levels)), "--repeat", str(repeat)],
        capture_output=True, text=True, timeout=1800, cwd="/tmp")
    if done.returncode != 0:
        raise SystemExit(f"transformers' run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    version = f"transformers {lines[0]['transformers']}, torch {lines[0]['torch']}"
    return version, {line["streams"]: line["tok_s"] for line in lines[1:]}


async def itl_during_long_prompt(base: str, model: str, running: int, run_tokens: int,
                                 long_words: int) -> tuple[list[float], list[float], StreamResult]:
    """Start ``running`` streams, then admit one long prompt; returns the running streams' inter-chunk gaps
    while the long prompt waited for its first token, their gaps otherwise, and the long stream's result."""
    tasks = [asyncio.create_task(stream_chat(base, model, prompt(i), run_tokens)) for i in range(running)]
    await asyncio.sleep(0.5)  # the running streams are decoding by now
    long = await stream_chat(base, model, prompt(99, long_words), 4)
    results = await asyncio.gather(*tasks)
    start, end = long.started, long.arrivals[0]
    if any(r.arrivals[-1] < end for r in results):
        print("  note: a running stream ended before the long prompt's first token; raise --itl-run-tokens")
    during = [g for r in results for g in r.gaps_between(start, end)]
    others = [b - a for r in results for a, b in zip(r.arrivals, r.arrivals[1:]) if b < start or a > end]
    return during, others, long


async def long_prompt_words(base: str, model: str, target_tokens: int) -> int:
    """Words of ``prompt(99, words)`` that make about ``target_tokens`` prompt tokens (calibrated once)."""
    probe = await stream_chat(base, model, prompt(99, 400), 1)
    per_word = probe.prompt_tokens / 400
    return max(1, int((target_tokens - 32) / per_word))


def ms(xs: list[float], p: int) -> str:
    return f"{pct(xs, p) * 1000:8.1f}" if xs else "       -"


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--tokens", type=int, default=128, help="completion tokens per stream")
    ap.add_argument("--streams", default="1,4,16")
    ap.add_argument("--repeat", type=int, default=3, help="rounds per concurrency; the best is reported")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--long-prompt-tokens", type=int, default=8192, help="the prompt admitted during decoding")
    ap.add_argument("--max-prefill-tokens", type=int, default=512, help="chunk size of the chunked server")
    ap.add_argument("--itl-streams", type=int, default=4)
    ap.add_argument("--itl-run-tokens", type=int, default=1024, help="tokens of each running stream")
    ap.add_argument("--transformers-venv", type=Path, default=TRANSFORMERS_VENV)
    ap.add_argument("--smoke", action="store_true", help="a few tokens, one round, to check the code path (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.tokens, args.repeat, args.streams = 8, 1, "1,4"
        args.long_prompt_tokens, args.max_prefill_tokens, args.itl_streams, args.itl_run_tokens = 600, 128, 2, 256
    levels = [int(s) for s in args.streams.split(",")]
    context = max(4096, 2 * args.long_prompt_tokens)
    common = ["--model", args.model, "--device", args.device, "--dtype", args.dtype, "--max-num-seqs",
              str(max(levels + [args.itl_streams + 1])), "--max-queue", str(max(levels)), "--max-model-len",
              str(context)]

    from unimodel.engines.local.loader import resolve_path

    checkpoint, _ = resolve_path(args.model)
    itl: dict[str, tuple[list[float], list[float], StreamResult]] = {}
    with processes() as procs:
        base = procs.unimodel(*common, "--max-prefill-tokens", str(args.max_prefill_tokens))
        ours, lens = await measure_ours(base, args.model, levels, args.tokens, args.repeat)
        words = await long_prompt_words(base, args.model, args.long_prompt_tokens)
        itl[f"chunked ({args.max_prefill_tokens})"] = await itl_during_long_prompt(
            base, args.model, args.itl_streams, args.itl_run_tokens, words)
    with processes() as procs:
        base = procs.unimodel(*common, "--max-prefill-tokens", str(context))
        itl["in one piece"] = await itl_during_long_prompt(base, args.model, args.itl_streams,
                                                           args.itl_run_tokens, words)
    theirs: dict[int, list[float]] = {}
    version = "transformers: not run (--smoke)"
    if not args.smoke:
        version, theirs = measure_theirs(transformers_python(args.transformers_venv), checkpoint, lens, levels,
                                         args.tokens, args.repeat)

    print(f"\n{args.model} ({checkpoint}), {args.device} {args.dtype}, {args.tokens} tokens per stream, greedy, "
          f"best of {args.repeat} (median in brackets)")
    print(f"ours: unimodel serve over HTTP (SSE, one connection per stream); theirs: {version}, "
          "init_continuous_batching in process")
    print(f"{'streams':>7} {'ours tok/s':>18} {'theirs tok/s':>18} {'ours/theirs':>12}")
    for n in levels:
        mine = f"{max(ours[n]):7.0f} ({statistics.median(ours[n]):6.0f})"
        other = f"{max(theirs[n]):7.0f} ({statistics.median(theirs[n]):6.0f})" if n in theirs else "-"
        ratio = f"{max(ours[n]) / max(theirs[n]):11.2f}x" if n in theirs else "-"
        print(f"{n:>7} {mine:>18} {other:>18} {ratio:>12}")
    long_tokens = next(iter(itl.values()))[2].prompt_tokens
    print(f"\ninter-token latency of {args.itl_streams} running streams while a {long_tokens}-token prompt is "
          "admitted (ms; 'during' = from its request to its first token)")
    print(f"{'prefill':>16} {'p50 during':>10} {'p99 during':>10} {'max during':>10} {'p99 other':>10} "
          f"{'long TTFT':>10}")
    for label, (during, others, long) in itl.items():
        ttft = (long.arrivals[0] - long.started) * 1000
        print(f"{label:>16} {ms(during, 50):>10} {ms(during, 99):>10} "
              f"{(max(during) * 1000 if during else 0):10.1f} {ms(others, 99):>10} {ttft:10.1f}")
    top = max(levels)
    if top in theirs:
        print(f"ratio ours/transformers at {top} streams = {max(ours[top]) / max(theirs[top]):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
