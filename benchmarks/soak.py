"""Soak: does the gateway hold steady over many requests? RSS, asyncio tasks, open fds, upstream connections.

Starts, on 127.0.0.1, the scripted upstream, a throwaway redis-server (when installed) and `unimodel serve
--engine upstream` with every stage on: a client key, the route stage, rpm/tpm/concurrency limits set far above
the load, idempotency (Redis, or memory), retries and the breaker, the request log in a temporary SQLite
file, and /metrics. Then sends a fixed mix at a fixed concurrency, bounded by `--requests` and `--max-seconds`:
streamed and one-body answers, an Idempotency-Key on a fifth of them (half of those sent twice: a replay),
requests to a model that always fails (`bench-fail`, a 400: expected), and streams the client drops after
their first frame (expected). A shorter soak follows over the embedded engine (tiny-random, its failures: an
unknown model, a 404).

The server process is sampled from outside (`_proc_stats.py`) with the load paused (`--settle-s`, then one
request, see `quiet_sample`), after the warm-up and at the end: RSS, open file descriptors, established
connections to the upstream's port and the `unimodel_asyncio_tasks` gauge of its /metrics; its RSS is also read
every second under load. Prints, per soak, the mix as answered, the RSS under load by quarter of the run, then
the figures at both points and what changed, against the targets: RSS growth < 10 % after warm-up, no growth
in tasks, fds or connections, 0 unexpected errors. Figures only: nothing is asserted.

    python benchmarks/soak.py [--requests 100000] [--max-seconds 1800] [--concurrency 16] [--settle-s 6]
                              [--local-requests 400] [--no-local] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

import httpx
from _proc_stats import Sample, rss_bytes, sample
from _processes import processes

KEY = "sk-soak-every-stage"
METRICS_KEY = "sk-soak-metrics-scrape"  # /metrics answers its key only, the server having API keys
PROMPT = [{"role": "user", "content": "2+2?"}]


@dataclass(frozen=True)
class Mix:
    """Which models a soak sends its normal, failing and abandoned requests to, and how long the answers are."""

    model: str
    failing_model: str
    abandoned_model: str
    max_tokens: Optional[int] = None


@dataclass
class Tally:
    answered: Counter[str] = field(default_factory=Counter)  # expected outcomes, by kind
    unexpected: Counter[str] = field(default_factory=Counter)  # anything else, by what happened

    def expect(self, kind: str) -> None:
        self.answered[kind] += 1

    def surprise(self, what: str) -> None:
        self.unexpected[what] += 1


def kind_of(i: int) -> str:
    """The request ``i`` of the mix (deterministic, so two runs send the same)."""
    if i % 20 == 0:
        return "scripted failure"
    if i % 50 == 1:
        return "abandoned stream"
    if i % 10 == 3:
        return "idempotent replay"  # the same key and body as request i - 1
    return "streamed" if i % 3 else "one body"


def body_of(i: int, mix: Mix) -> dict[str, Any]:
    kind = kind_of(i)
    if kind == "idempotent replay":
        return body_of(i - 1, mix)
    model = {"scripted failure": mix.failing_model, "abandoned stream": mix.abandoned_model}.get(kind, mix.model)
    body: dict[str, Any] = {"model": model, "messages": PROMPT, "stream": kind != "one body"}
    if mix.max_tokens is not None:
        body["max_tokens"] = mix.max_tokens
    return body


def headers_of(i: int, run_id: str) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {KEY}"}
    if i % 5 == 2:  # a fifth carry a key; i % 10 == 3 repeats the key of i - 1 (i % 10 == 2)
        headers["Idempotency-Key"] = f"soak-{run_id}-{i}"
    elif kind_of(i) == "idempotent replay":
        headers["Idempotency-Key"] = f"soak-{run_id}-{i - 1}"
    return headers


async def one(client: httpx.AsyncClient, url: str, i: int, mix: Mix, run_id: str, tally: Tally) -> None:
    kind = kind_of(i)
    body = body_of(i, mix)
    try:
        async with client.stream("POST", url + "/chat/completions", json=body,
                                 headers=headers_of(i, run_id)) as resp:
            if kind == "scripted failure":
                await resp.aread()
                if 400 <= resp.status_code < 500:
                    tally.expect(kind)
                else:
                    tally.surprise(f"scripted failure answered {resp.status_code}")
                return
            if resp.status_code != 200:
                await resp.aread()
                tally.surprise(f"{kind}: HTTP {resp.status_code} {resp.text[:120]!r}")
                return
            if kind == "abandoned stream":
                async for line in resp.aiter_lines():
                    if line.startswith("data:"):
                        break  # leaving the block closes the connection mid-stream
                tally.expect(kind)
                return
            text = (await resp.aread()).decode()
            streamed = bool(body["stream"])
            if streamed and "data: [DONE]" not in text:
                tally.surprise(f"{kind}: stream without [DONE]")
            elif not streamed and '"choices"' not in text:
                tally.surprise(f"{kind}: body without choices")
            else:
                tally.expect(kind)
    except httpx.HTTPError as exc:
        tally.surprise(f"{kind}: {type(exc).__name__}")


async def load(url: str, mix: Mix, first: int, count: int, concurrency: int, deadline: float,
               run_id: str, tally: Tally) -> int:
    """Requests ``first`` .. ``first + count - 1`` at ``concurrency``, until ``deadline``; returns how many ran."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    next_i = first
    done = 0
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def worker() -> None:
            nonlocal next_i, done
            while next_i < first + count and time.monotonic() < deadline:
                i = next_i
                next_i += 1
                await one(client, url, i, mix, run_id, tally)
                done += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


def watch_rss(pid: int, trend: list[float], stop: threading.Event) -> None:
    while not stop.wait(1.0):
        trend.append(rss_bytes(pid) / 2**20)


def quiet_sample(pid: int, url: str, ports: tuple[Optional[int], Optional[int]], mix: Mix,
                 settle_s: float) -> Sample:
    """A sample with the load stopped. The upstream client keeps idle connections up to its keep-alive expiry
    (httpx: 5 s) and closes expired ones only when its pool is next used; so wait past the expiry, send one
    request, and what is left open is in use or leaked, not the recent peak of concurrency."""
    time.sleep(settle_s)
    with httpx.Client(timeout=60) as client:
        client.post(url + "/chat/completions", json={**body_of(2, mix), "stream": False},
                    headers={"Authorization": f"Bearer {KEY}"}).raise_for_status()
    time.sleep(0.5)
    return sample(pid, url, *ports, metrics_key=METRICS_KEY)


def soak(title: str, pid: int, url: str, ports: tuple[Optional[int], Optional[int]], mix: Mix, requests: int,
         warmup: int, concurrency: int, max_seconds: float, settle_s: float) -> bool:
    """One soak; ``ports``: the upstream's and Redis's (None: not used). Prints its figures and returns whether
    every target held."""
    tally = Tally()
    run_id = f"{time.time_ns():x}"
    t0 = time.monotonic()
    deadline = t0 + max_seconds
    ran = asyncio.run(load(url, mix, 0, warmup, concurrency, deadline, run_id, tally))
    start = quiet_sample(pid, url, ports, mix, settle_s)
    t1 = time.monotonic()
    trend: list[float] = []  # RSS under load, every second: a leak climbs, a settled heap wobbles
    loaded = threading.Event()
    watcher = threading.Thread(target=watch_rss, args=(pid, trend, loaded), daemon=True)
    watcher.start()
    ran_after = asyncio.run(load(url, mix, ran, max(0, requests - ran), concurrency, deadline, run_id, tally))
    loaded.set()
    watcher.join(timeout=10)
    took = time.monotonic() - t1
    end = quiet_sample(pid, url, ports, mix, settle_s)

    print(f"\n{title}: {ran + ran_after} requests ({ran} warm-up, then {ran_after} in {took:.1f} s, "
          f"{ran_after / max(took, 1e-9):.0f} req/s) at concurrency {concurrency}")
    print(f"{'answered as expected':<28}{'count':>8}")
    for kind, n in sorted(tally.answered.items()):
        print(f"  {kind:<26}{n:>8}")
    unexpected = sum(tally.unexpected.values())
    for what, n in tally.unexpected.most_common(10):
        print(f"  UNEXPECTED {what:<60}{n:>8}")
    growth = (end.rss_mib - start.rss_mib) / start.rss_mib * 100
    if trend:
        quarters = [trend[len(trend) * q // 4:len(trend) * (q + 1) // 4] for q in range(4)]
        print("RSS under load, MiB, highest of each quarter of the run: "
              + " ".join(f"{max(part):.1f}" for part in quarters if part))
    tasks_counted = start.asyncio_tasks is not None and end.asyncio_tasks is not None
    tasks_change = f"{(end.asyncio_tasks or 0) - (start.asyncio_tasks or 0):+d}" if tasks_counted else "-"
    tasks_held = tasks_counted and (end.asyncio_tasks or 0) <= (start.asyncio_tasks or 0)
    rows = [
        ("RSS MiB", f"{start.rss_mib:.1f}", f"{end.rss_mib:.1f}", f"{growth:+.1f} %", "< 10 %", growth < 10),
        ("asyncio tasks", str(start.asyncio_tasks), str(end.asyncio_tasks), tasks_change, "no growth", tasks_held),
        ("open fds", str(start.fds), str(end.fds), f"{end.fds - start.fds:+d}", "no growth*",
         end.fds - end.redis_connections <= start.fds - start.redis_connections),
        ("upstream connections", str(start.upstream_connections), str(end.upstream_connections),
         f"{end.upstream_connections - start.upstream_connections:+d}", "no growth",
         end.upstream_connections <= start.upstream_connections),
        ("unexpected errors", "", str(unexpected), "", "0", unexpected == 0),
    ]
    if ports[1] is not None:  # redis-py keeps idle connections: pools that fill up to the peak concurrency
        bound = 2 * concurrency + 2  # the limits' and idempotency's pools, one connection a request each, and probes
        rows.insert(4, ("Redis connections", str(start.redis_connections), str(end.redis_connections),
                        f"{end.redis_connections - start.redis_connections:+d}", f"<= {bound}",
                        end.redis_connections <= bound))
    print(f"{'figure':<22}{'after warm-up':>14}{'end':>10}{'change':>10}{'target':>12}  held")
    for name, before, after, change, target, held in rows:
        print(f"{name:<22}{before:>14}{after:>10}{change:>10}{target:>12}  {'yes' if held else 'NO'}")
    print("* fds other than the connections to Redis (redis-py keeps its idle connections open)")
    changed = {kind: end.fd_kinds[kind] - start.fd_kinds[kind] for kind in start.fd_kinds | end.fd_kinds
               if end.fd_kinds[kind] != start.fd_kinds[kind]}
    if changed:
        print("open fds that changed, by kind: " + ", ".join(f"{k} {v:+d}" for k, v in sorted(changed.items())))
    return all(row[-1] for row in rows)


def log_in(folder: Path) -> tuple[str, ...]:
    """Flags that keep a server's request log (SQLite) and its secret in ``folder``."""
    folder.mkdir(parents=True)
    return "--data-dir", str(folder), "--log-db", f"sqlite:///{folder / 'requests.db'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=100_000, help="requests of the upstream soak")
    ap.add_argument("--max-seconds", type=float, default=1800, help="time bound of each soak")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=2000, help="requests before the first sample")
    ap.add_argument("--local-requests", type=int, default=400, help="requests of the embedded engine's soak")
    ap.add_argument("--local-model", default="tiny-random")
    ap.add_argument("--no-local", dest="local", action="store_false", help="skip the embedded engine's soak")
    ap.add_argument("--settle-s", type=float, default=6.0, help="quiet seconds before each sample (past the "
                    "upstream client's 5 s keep-alive expiry)")
    ap.add_argument("--smoke", action="store_true", help="a few requests of each, to check the code path (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.requests, args.warmup, args.local_requests, args.concurrency, args.settle_s = 120, 40, 24, 4, 0.5

    work = Path(tempfile.mkdtemp(prefix="unimodel-soak-"))
    held = True
    try:
        with processes() as started:
            upstream = started.scripted_upstream()
            redis_url = started.redis() if shutil.which("redis-server") else None
            stores = ("--redis", redis_url) if redis_url else ()
            redis_port = urlsplit(redis_url).port if redis_url else None
            every = ("--api-key", KEY, "--rpm", "100000000", "--tpm", "100000000000", "--max-concurrent", "100000",
                     "--retries", "2", "--breaker-failures", "5", "--request-log", "--metrics",
                     "--metrics-key", METRICS_KEY, *stores)
            url = started.unimodel("--engine", "upstream", "--upstream", upstream, *every, *log_in(work / "upstream"))
            print("every stage on: a client key, routes, rpm/tpm/concurrency limits, idempotency "
                  f"({'Redis' if stores else 'memory'}), retries and the breaker, the request log (SQLite), "
                  "/metrics")
            held &= soak("upstream engine (scripted upstream)", started.procs[-1].pid, url,
                         (urlsplit(upstream).port, redis_port), Mix("bench-plain", "bench-fail", "bench-paced"),
                         args.requests, min(args.warmup, args.requests // 5), args.concurrency, args.max_seconds,
                         args.settle_s)
            if args.local:
                url = started.unimodel("--engine", "local", "--model", args.local_model, *every,
                                       *log_in(work / "local"))
                held &= soak(f"embedded engine ({args.local_model})", started.procs[-1].pid, url,
                             (None, redis_port),
                             Mix(args.local_model, "no-such-model", args.local_model, max_tokens=16),
                             args.local_requests, max(4, args.local_requests // 5), min(args.concurrency, 4),
                             args.max_seconds, args.settle_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nsoak targets {'held' if held else 'NOT held'}")


if __name__ == "__main__":
    main()
