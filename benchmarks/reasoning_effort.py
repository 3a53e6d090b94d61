"""Reasoning effort A/B: what each level costs in thinking, answer tokens and time.

For each effort level, sends the same prompts (streaming) and prints a table of thinking tokens, answer
tokens, TTFT (first byte of anything) and time to the first answer token, p50/p95. Default endpoint: the
embedded engine on `tiny-random`, started here on 127.0.0.1; or point it at any unimodel with --url.

    python benchmarks/reasoning_effort.py [--url http://127.0.0.1:8000/v1 --model NAME] [--requests 8] [--smoke]
    python benchmarks/reasoning_effort.py --scripted-upstream   # budgets on a model that thinks 6,000 tokens

tiny-random never opens its thinking, so on the default endpoint every level thinks 0 tokens; the scripted
upstream (a vLLM stand-in whose model always thinks 6,000 tokens, one token a frame) shows the budgets.
"""

from __future__ import annotations

import argparse
import json
import time

import httpx
from _processes import pct, processes

LEVELS = ["none", "minimal", "low", "medium", "high"]
PROMPTS = [
    "How many r are in the word strawberry?",
    "A train leaves at 9:40 and arrives at 13:05. How long is the trip?",
    "Write a Python function that reverses a linked list.",
    "Is 391 a prime number?",
]


def one(client: httpx.Client, url: str, model: str, effort: str, prompt: str, max_tokens: int) -> dict[str, float]:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True,
            "reasoning_effort": effort, "max_tokens": max_tokens, "temperature": 0,
            "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first = first_answer = None
    usage: dict = {}
    with client.stream("POST", url + "/chat/completions", json=body) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: {"):
                continue
            frame = json.loads(line[6:])
            now = time.perf_counter() - t0
            for c in frame.get("choices", []):
                d = c["delta"]
                if first is None and (d.get("reasoning") or d.get("content")):
                    first = now
                if first_answer is None and (d.get("content") or d.get("tool_calls")):
                    first_answer = now
            usage = frame.get("usage") or usage
    total = time.perf_counter() - t0
    thinking = usage.get("completion_tokens_details", {}).get("reasoning_tokens", 0)
    return {"thinking": thinking, "answer": usage.get("completion_tokens", 0) - thinking,
            "ttft": first if first is not None else total,
            "ttfa": first_answer if first_answer is not None else total}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url")
    ap.add_argument("--model", default="tiny-random")
    ap.add_argument("--requests", type=int, default=8, help="requests per level")
    ap.add_argument("--max-tokens", type=int, default=8192)
    ap.add_argument("--scripted-upstream", action="store_true",
                    help="serve the scripted 6,000-token thinker through `unimodel serve --engine upstream`")
    ap.add_argument("--smoke", action="store_true", help="one short request per level, to check the code path (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.requests, args.max_tokens = 1, 8

    with processes() as started:
        url = args.url
        if url is None and args.scripted_upstream:
            args.model = "bench-thinker"
            url = started.unimodel("--engine", "upstream", "--upstream", started.scripted_upstream())
        elif url is None:
            url = started.unimodel("--engine", "local", "--model", args.model)
        report(url, args)


def report(url: str, args: argparse.Namespace) -> None:
    with httpx.Client(timeout=600) as client:
        one(client, url, args.model, "none", PROMPTS[0], 8)  # warm-up
        print(f"{'effort':<9}{'think p50':>10}{'think p95':>10}{'answer p50':>11}{'TTFT p50':>10}"
              f"{'TTFT p95':>10}{'TTFA p50':>10}{'TTFA p95':>10}   (times in ms)")
        for level in LEVELS:
            rows = [one(client, url, args.model, level, PROMPTS[i % len(PROMPTS)], args.max_tokens)
                    for i in range(args.requests)]
            col = {k: [r[k] for r in rows] for k in rows[0]}
            print(f"{level:<9}{pct(col['thinking'], 50):>10.0f}{pct(col['thinking'], 95):>10.0f}"
                  f"{pct(col['answer'], 50):>11.0f}{pct(col['ttft'], 50) * 1e3:>10.1f}"
                  f"{pct(col['ttft'], 95) * 1e3:>10.1f}{pct(col['ttfa'], 50) * 1e3:>10.1f}"
                  f"{pct(col['ttfa'], 95) * 1e3:>10.1f}")

if __name__ == "__main__":
    main()
