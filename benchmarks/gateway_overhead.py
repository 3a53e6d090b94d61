"""Added latency of the unimodel gateway in front of an OpenAI-compatible upstream.

Starts the scripted upstream and `unimodel serve --engine upstream` as separate processes on 127.0.0.1,
sends the same streaming requests straight to the upstream and through unimodel (sequential, then at
concurrency 32), and prints p50/p99 latency, the added latency, and the ratio of request rates measured in
this one run. Figures only: nothing is asserted.

    python benchmarks/gateway_overhead.py [--requests 300] [--concurrency 32] [--model bench-think]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
from _processes import pct, processes

async def one(client: httpx.AsyncClient, url: str, model: str) -> tuple[float, float]:
    body = {"model": model, "messages": [{"role": "user", "content": "2+2?"}], "stream": True}
    t0 = time.perf_counter()
    ttft = None
    async with client.stream("POST", url + "/chat/completions", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if ttft is None and line.startswith("data:"):
                ttft = time.perf_counter() - t0
    return time.perf_counter() - t0, ttft or 0.0


async def run(url: str, model: str, requests: int, concurrency: int) -> tuple[list[float], float]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        for _ in range(min(10, requests)):  # warm-up: connections, imports, caches
            await one(client, url, model)
        queue = list(range(requests))
        lat: list[float] = []

        async def worker() -> None:
            while queue:
                queue.pop()
                lat.append((await one(client, url, model))[0])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return lat, requests / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--model", default="bench-think")
    args = ap.parse_args()

    with processes() as started:
        upstream = started.scripted_upstream()
        gateway = started.unimodel("--engine", "upstream", "--upstream", upstream)
        print(f"{'mode':<12}{'path':<10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
        for label, conc, n in (("sequential", 1, args.requests), (f"conc {args.concurrency}", args.concurrency,
                                                                   args.requests * 2)):
            direct, direct_rps = asyncio.run(run(upstream, args.model, n, conc))
            via, via_rps = asyncio.run(run(gateway, args.model, n, conc))
            for path, lat, rps in (("direct", direct, direct_rps), ("unimodel", via, via_rps)):
                print(f"{label:<12}{path:<10}{rps:>9.1f}{pct(lat, 50) * 1e3:>9.2f}{pct(lat, 99) * 1e3:>9.2f}")
            print(f"{label:<12}{'added':<10}{'':>9}{(pct(via, 50) - pct(direct, 50)) * 1e3:>9.2f}"
                  f"{(pct(via, 99) - pct(direct, 99)) * 1e3:>9.2f}   rate ratio unimodel/direct = "
                  f"{via_rps / direct_rps:.2f}")


if __name__ == "__main__":
    main()
