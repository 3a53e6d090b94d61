"""Does a heavy key push a light key's time to first token up, when the pool is saturated?

Two simulated vLLM replicas (``tests/support/sim_vllm.py``, few slots each) behind ``unimodel serve`` with two
API keys. The *heavy* key runs a closed loop at high concurrency, enough to keep every replica saturated; the
*light* key sends one request at a time. Measured side by side in one run, the light key's TTFT p50/p95:

- ``alone``: the light key with no heavy traffic (the floor);
- ``round-robin``: heavy traffic, ``--pool-policy round-robin`` (no queue at the gateway: every request joins a
  replica's own first-come-first-served queue, as behind a Kubernetes Service);
- ``fair``: heavy traffic, ``--pool-policy balanced``: requests beyond the replicas' room wait at the gateway and
  are admitted fairly between keys (start-time fair queuing), so the light key's request waits behind at most
  one request of the heavy key;
- ``fair+interactive``: the same, with the heavy key's requests in the ``batch`` class (its key's own class) and
  the light key's ``interactive``: they go first.

The bound the gateway states: with fair queuing the light key's p95 TTFT stays within a small multiple of one
request's service time plus the replicas' own queue (``--pool-max-waiting``), whatever the heavy key's
concurrency; without it, it grows with the heavy key's concurrency. Printed, never asserted.

    python benchmarks/pool_fairness.py [--heavy 48] [--light-requests 40] [--max-num-seqs 4] [--decode-ms 8] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _processes import pct, processes  # noqa: E402
from pool import start_sims  # noqa: E402

from unimodel.gateway.keyhash import hash_key  # noqa: E402

HEAVY, LIGHT, ADMIN = "sk-heavy-key-0123456789", "sk-light-key-0123456789", "admin-key-0123456789abcdef"
MODEL = "sim-model"


async def ttft(session: aiohttp.ClientSession, url: str, key: str, max_tokens: int, i: int) -> float:
    """The time to the first answer token of one streamed request (whose answer is read to its end)."""
    body = {"model": MODEL, "max_tokens": max_tokens, "stream": True,
            "messages": [{"role": "user", "content": f"request {key[:8]} {i} " + "words " * 50}]}
    start = time.perf_counter()
    first = None
    async with session.post(url + "/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {key}"}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
        async for line in resp.content:
            if first is None and line.startswith(b"data: {") and b'"content"' in line:
                first = time.perf_counter() - start
    return first if first is not None else time.perf_counter() - start


async def scenario(url: str, heavy: int, light_requests: int, max_tokens: int) -> list[float]:
    stop = asyncio.Event()
    rng = random.Random(7)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        async def heavy_worker(w: int) -> None:
            i = 0
            while not stop.is_set():
                try:
                    # answers of varied length, so that slots free at varied times (identical ones free in waves)
                    await ttft(session, url, HEAVY, rng.randint(max_tokens // 2, max_tokens * 3 // 2), w * 100000 + i)
                except (RuntimeError, aiohttp.ClientError, asyncio.TimeoutError):
                    await asyncio.sleep(0.05)
                i += 1

        workers = [asyncio.create_task(heavy_worker(w)) for w in range(heavy)]
        try:
            await asyncio.sleep(2.0 if heavy else 0)  # let the heavy key fill every replica and the queue
            out = [await ttft(session, url, LIGHT, max_tokens, i) for i in range(light_requests)]
        finally:
            stop.set()
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
    return out


def write_config(path: Path, heavy_class: str) -> None:
    path.write_text(f"""keys:
  - name: heavy
    key_hash: "{hash_key(HEAVY)}"
    priority_class: {heavy_class}
  - name: light
    key_hash: "{hash_key(LIGHT)}"
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--heavy", type=int, default=48, help="the heavy key's concurrent requests")
    ap.add_argument("--light-requests", type=int, default=40)
    ap.add_argument("--max-num-seqs", type=int, default=4, help="slots of each simulated replica")
    ap.add_argument("--decode-ms", type=float, default=8.0)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--smoke", action="store_true", help="a few requests (the same table), for CI")
    args = ap.parse_args()
    if args.smoke:
        args.heavy, args.light_requests = 8, 3
    sim = ["--served-model-name", MODEL, "--max-num-seqs", str(args.max_num_seqs), "--decode-ms",
           str(args.decode_ms)]
    rows = []
    for label, policy, heavy, heavy_class in (("alone", "balanced", 0, "interactive"),
                                              ("round-robin", "round-robin", args.heavy, "interactive"),
                                              ("fair", "balanced", args.heavy, "interactive"),
                                              ("fair+interactive", "balanced", args.heavy, "batch")):
        with processes() as started:
            urls = start_sims(started, 2, sim)
            config = Path(f"/tmp/unimodel-fairness-{label}.yaml")
            write_config(config, heavy_class)
            flags = ["--engine", "upstream", "--model", MODEL, "--pool-policy", policy, "--config", str(config),
                     "--admin-key", ADMIN, "--pool-max-waiting", "1", "--pool-scrape-interval-s", "0.25",
                     "--no-request-log", "--pool-queue-timeout-s", "120"]
            for url in urls:
                flags += ["--upstream", url]
            gateway = started.unimodel(*flags)
            times = asyncio.run(scenario(gateway, heavy, args.light_requests, args.max_tokens))
            rows.append((label, pct(times, 50) * 1000, pct(times, 95) * 1000))
            print(f"  {label}: done", flush=True)
    floor = rows[0][2]
    print(f"\nlight key's TTFT with the heavy key at concurrency {args.heavy} (2 replicas × {args.max_num_seqs} "
          f"slots, {args.max_tokens} tokens an answer)")
    print(f"{'scenario':<18} {'p50 ms':>9} {'p95 ms':>9} {'p95 / alone':>12}")
    for label, p50, p95 in rows:
        print(f"{label:<18} {p50:9.1f} {p95:9.1f} {p95 / floor:12.2f}")


if __name__ == "__main__":
    main()
