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
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


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


def pct(xs: list[float], p: float) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[int(p) - 1] if len(xs) > 1 else xs[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--model", default="bench-think")
    args = ap.parse_args()

    procs: list[subprocess.Popen[bytes]] = []
    try:
        port_file = Path(tempfile.mkdtemp()) / "upstream"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        procs.append(subprocess.Popen([sys.executable, "-m", "tests.support.scripted_upstream", str(port_file)],
                                      cwd=ROOT, env=env))
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        upstream = port_file.read_text().strip()
        port = free_port()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "unimodel.cli", "serve", "--engine", "upstream", "--upstream", upstream,
             "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env))
        gateway = f"http://127.0.0.1:{port}/v1"
        wait_http(upstream + "/models")
        wait_http(f"http://127.0.0.1:{port}/ready")

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
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)


if __name__ == "__main__":
    main()
