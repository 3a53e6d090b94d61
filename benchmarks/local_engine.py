"""Decode throughput of the embedded engine at 1, 4 and 16 concurrent streams (default: tiny-random, CPU).

Runs ``LocalEngine`` in this process (no HTTP), greedy decoding, every stream asking for the same number of
tokens from a different prompt. A warm-up round runs first at the largest concurrency and is not counted; then the
concurrency levels are measured in interleaved rounds and the best round per level is reported (and the ratio
of medians too, since a shared CPU machine is noisy).
Prints, per concurrency: aggregate tokens/s (completion tokens from the engine's own ``Usage`` over wall
time, prefill included), tokens/s per stream, mean time to first token, and the aggregate throughput as a
multiple of single-stream. Figures only: nothing is asserted. Target on tiny-random: 16 streams ≥ 8x.

    python benchmarks/local_engine.py [--model tiny-random] [--tokens 128] [--streams 1,4,16] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from unimodel.engines.base import GenerationRequest
from tests.support.requests import gen_request
from unimodel.engines.local import LocalEngine
from unimodel.protocol.events import ContentDelta, ReasoningDelta, Usage
from unimodel.protocol.openai import ChatCompletionRequest

PROMPT_WORDS = "the quick brown fox jumps over the lazy dog while a cat watches from the old stone wall".split()


def make_request(i: int, tokens: int, model: str) -> GenerationRequest:
    words = " ".join(PROMPT_WORDS[(i + k) % len(PROMPT_WORDS)] for k in range(8 + i % 7))
    wire = ChatCompletionRequest(model=model, messages=[{"role": "user", "content": f"Story {i}: {words}"}],
                                 temperature=0.0, max_tokens=tokens)
    return gen_request(request_id=f"bench-{i}", served_model=model, wire=wire, max_tokens=tokens)


async def one_stream(engine: LocalEngine, req: GenerationRequest) -> tuple[int, float]:
    t0 = time.perf_counter()
    ttft = 0.0
    completion = 0
    async for event in engine.generate(req):
        if not ttft and isinstance(event, (ContentDelta, ReasoningDelta)):
            ttft = time.perf_counter() - t0
        if isinstance(event, Usage):
            completion = event.completion_tokens
    return completion, ttft


async def round_of(engine: LocalEngine, streams: int, tokens: int, model: str) -> tuple[float, float, float]:
    t0 = time.perf_counter()
    results = await asyncio.gather(*(one_stream(engine, make_request(i, tokens, model)) for i in range(streams)))
    wall = time.perf_counter() - t0
    total = sum(r[0] for r in results)
    return total / wall, total / wall / streams, statistics.mean(r[1] for r in results)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--tokens", type=int, default=128, help="completion tokens per stream")
    ap.add_argument("--streams", default="1,4,16")
    ap.add_argument("--repeat", type=int, default=5, help="rounds per concurrency; the best is reported")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    levels = [int(s) for s in args.streams.split(",")]

    engine = LocalEngine(args.model, device=args.device, dtype=args.dtype, max_num_seqs=max(levels),
                         max_queue=max(levels))
    await engine.start()
    try:
        loaded = engine.loaded
        print(f"model {args.model} ({loaded.path}) on {loaded.device}, {loaded.dtype}; "
              f"{args.tokens} tokens per stream, best of {args.repeat}")
        await round_of(engine, max(levels), min(32, args.tokens), args.model)  # warm-up
        # rounds interleave the levels (1, 4, 16, 1, 4, 16, ...) so a slow spell of a shared machine hits all
        trials: dict[int, list[tuple[float, float, float]]] = {n: [] for n in levels}
        for _ in range(args.repeat):
            for n in levels:
                trials[n].append(await round_of(engine, n, args.tokens, args.model))
        rows: list[tuple[int, float, float, float]] = []
        for n in levels:
            best = max(trials[n], key=lambda r: r[0])
            rows.append((n, *best))
        medians = {n: statistics.median(r[0] for r in trials[n]) for n in levels}
        base = rows[0][1] if rows and rows[0][0] == 1 else None
        print(f"{'streams':>7} {'tok/s':>9} {'tok/s/stream':>13} {'ttft ms':>8} {'x single':>9}")
        for n, agg, per, ttft in rows:
            mult = f"{agg / base:8.1f}x" if base else "       -"
            print(f"{n:>7} {agg:>9.0f} {per:>13.1f} {ttft * 1000:>8.1f} {mult}")
        if base:
            top = rows[-1]
            print(f"aggregate throughput at {top[0]} streams = {top[1] / base:.1f}x single-stream, best vs best "
                  f"(median vs median: {medians[top[0]] / medians[levels[0]]:.1f}x; target >= 8x)")
    finally:
        await engine.aclose()


if __name__ == "__main__":
    asyncio.run(main())
