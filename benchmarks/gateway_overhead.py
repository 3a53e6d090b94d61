"""Added latency of the unimodel gateway in front of an OpenAI-compatible upstream.

Starts the scripted upstream and `unimodel serve --engine upstream` as separate processes on 127.0.0.1,
sends the same requests, streamed and plain (non-streamed), straight to the upstream and through unimodel
(sequential, then at concurrency 32 and 64), and prints p50/p99 latency, the added latency, and the ratio of request rates measured in
this one run. Figures only: nothing is asserted.

Besides the rates, the CPU time each process spent per request (``gw ms``: the gateway, ``up ms``: the
upstream, ``cli ms``: this load generator), read from /proc: on a machine where the load generator, the
upstream and the gateway share a few cores, the rate ratio says mostly how the cores were shared, while
the gateway's CPU per request against the upstream's says what the gateway costs wherever it runs. The load
generator is aiohttp, the lightest well-kept asyncio client (httpx took about three times its CPU per
request here), so that it takes as little as it can of the cores it shares with what it measures.

First, in process and without HTTP, what the request pipeline itself costs per request: the server's
stages (auth, parse, validate, image policy, observers) and service around a null engine that yields a
22-event answer (a ``Flush`` after each token: one write per token), against the bare minimum (the same events
encoded as SSE frames).

    python benchmarks/gateway_overhead.py [--requests 300] [--concurrency 32,64] [--model bench-think]
                                          [--pipeline-only] [--litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import aiohttp
import orjson
from _proc_stats import cpu_seconds
from _processes import pct, processes

KEY = "sk-bench-every-stage"


async def one(client: aiohttp.ClientSession, url: str, model: str, governed: bool = False,
              stream: bool = True) -> tuple[float, float]:
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "2+2?"}], "stream": stream})
    headers = {"Content-Type": "application/json"}
    if governed:  # with every stage on: a key, and a fresh Idempotency-Key per request (each claimed and stored)
        headers.update({"Authorization": f"Bearer {KEY}", "Idempotency-Key": uuid.uuid4().hex})
    t0 = time.perf_counter()
    ttft = None
    async with client.post(url + "/chat/completions", data=body, headers=headers) as resp:
        if resp.status != 200:
            raise SystemExit(f"{url}: HTTP {resp.status}: {(await resp.read())[:300]!r}")
        async for chunk in resp.content.iter_any():  # the whole body, as it arrives
            if ttft is None and chunk:
                ttft = time.perf_counter() - t0
    return time.perf_counter() - t0, ttft or 0.0


async def measured_run(url: str, model: str, requests: int, concurrency: int, governed: bool = False,
                       pids: tuple[int, ...] = (), stream: bool = True) -> tuple[list[float], float, list[float]]:
    """``requests`` requests (streamed, or plain) from ``concurrency`` workers, each on its own connection (kept
    alive); with ``pids``, the CPU ms per request of those processes and of this one, in that order."""
    clients = [aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=aiohttp.ClientTimeout(60))
               for _ in range(concurrency)]
    try:
        for client in clients:  # warm-up: connections, imports, caches
            await one(client, url, model, governed, stream)
        queue = list(range(requests))
        lat: list[float] = []

        async def worker(client: aiohttp.ClientSession) -> None:
            while queue:
                queue.pop()
                lat.append((await one(client, url, model, governed, stream))[0])

        cpu0 = [cpu_seconds(pid) for pid in pids] + [time.process_time()]
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in clients))
        rate = requests / (time.perf_counter() - t0)
        cpu1 = [cpu_seconds(pid) for pid in pids] + [time.process_time()]
        return lat, rate, [(b - a) / requests * 1e3 for a, b in zip(cpu0, cpu1)]
    finally:
        for client in clients:
            await client.close()


async def pipeline_cost(requests: int, metrics: bool = False) -> tuple[float, float]:
    """Microseconds per streamed request: bare encoding, and the whole pipeline (both over a null engine);
    ``metrics``: with the /metrics observer beside the access log, as the server has it."""
    import json
    from collections.abc import AsyncIterator

    from unimodel.config import Settings
    from unimodel.engines.base import Engine, GenerationRequest
    from unimodel.protocol.events import FLUSH, ContentDelta, Event, Finish, Usage
    from unimodel.protocol.openai import ModelCard
    from unimodel.protocol.sse import frame
    from unimodel.compose import build_engines, build_metrics, build_stages
    from unimodel.service.assemble import ChunkEncoder
    from unimodel.service.chat import ChatService
    from unimodel.service.context import RequestContext
    from unimodel.service.observer import AccessLog, Observer, Observers
    from unimodel.service.pipeline import Call, Pipeline

    class NullEngine(Engine):
        kind = "null"

        async def start(self) -> None: ...

        async def aclose(self) -> None: ...

        def is_ready(self) -> bool:
            return True

        def models(self) -> list[ModelCard]:
            return [ModelCard(id="m", max_model_len=32768)]

        async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
            for i in range(20):
                yield ContentDelta(f"token{i} ")
                yield FLUSH  # as an engine whose client keeps up: one write per token
            yield Usage(12, 20)
            yield Finish("stop")

    engine = NullEngine()
    body = json.dumps({"model": "m", "stream": True, "max_tokens": 64, "temperature": 0.2,
                       "messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "What is 2+2?"}]}).encode()
    settings = Settings(engine="upstream", upstream="http://127.0.0.1:9/v1", api_keys=["sk-bench"])
    observers: list[Observer] = [AccessLog()]
    if metrics:
        measured = build_metrics(settings, engine)
        assert measured is not None
        observers.append(measured.observer)
    service = ChatService(engine, Pipeline(build_stages(settings, build_engines(settings, engine))), Observers(observers))
    headers = {"authorization": "Bearer sk-bench", "content-type": "application/json"}

    async def read() -> bytes:
        return body

    async def full() -> None:
        prepared = await service.prepare(Call(RequestContext("bench"), headers, read))
        async for _ in service.stream(prepared):
            pass

    async def bare() -> None:
        request = GenerationRequest("chatcmpl-bench", "m", [])
        encoder = ChunkEncoder(request.completion_id, "m")
        frame(encoder.first())
        async for event in engine.generate(request):
            for chunk in encoder.encode(event):
                frame(chunk)

    out = []
    for fn in (bare, full):
        for _ in range(50):
            await fn()
        t0 = time.perf_counter()
        for _ in range(requests):
            await fn()
        out.append((time.perf_counter() - t0) / requests * 1e6)
    return out[0], out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--concurrency", type=lambda v: [int(c) for c in v.split(",")], default=[32, 64],
                    help="comma-separated load levels besides the sequential one")
    ap.add_argument("--model", default="bench-think")
    ap.add_argument("--pipeline-only", action="store_true", help="only the in-process pipeline cost")
    ap.add_argument("--litellm", action="store_true", help="LiteLLM's proxy too (installed into its own venv "
                    "on first use: benchmarks/_litellm.py)")
    ap.add_argument("--smoke", action="store_true", help="a few requests, to check the code path (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.requests, args.concurrency = 10, [4]

    import logging

    access = logging.getLogger("unimodel.access")
    access.propagate = False
    for label, level, metrics in (("access log off", logging.WARNING, False), ("access log on", logging.INFO, False),
                                  ("access log and metrics on", logging.INFO, True)):
        access.handlers = [logging.NullHandler()]  # the line is formatted, not written anywhere
        access.setLevel(level)
        bare, full = asyncio.run(pipeline_cost(args.requests if args.smoke else max(args.requests, 2000), metrics))
        print(f"pipeline, in process, {label}: bare SSE encoding {bare:.1f} µs/request, with every stage "
              f"{full:.1f} µs/request: the pipeline adds {full - bare:.1f} µs")
    access.propagate = True
    access.setLevel(logging.NOTSET)
    if args.pipeline_only:
        return

    with processes() as started:
        upstream = started.scripted_upstream()
        upstream_pid = started.procs[-1].pid
        redis_url = started.redis()
        common = ("--engine", "upstream", "--upstream", upstream)
        bare_flags = ("--retries", "0", "--breaker-failures", "0", "--no-idempotency")
        every = ("--api-key", KEY, "--rpm", "1000000", "--tpm", "1000000000", "--max-concurrent", "10000")
        gateways: dict[str, tuple[str, int]] = {}
        for path, flags in (("bare", (*common, *bare_flags)), ("all, mem", (*common, *every)),
                            ("all, redis", (*common, *every, "--redis", redis_url))):
            gateways[path] = (started.unimodel(*flags), started.procs[-1].pid)
        if args.litellm:
            import _litellm

            gateways["litellm"] = (_litellm.start(started, upstream, args.model, KEY), started.procs[-1].pid)
            print(f"litellm: LiteLLM {_litellm.version()} proxy, 1 worker, its master key checked")
        print("every stage on: a named key, the route stage, rpm/tpm and concurrency limits, a fresh "
              "Idempotency-Key per request, retries and the breaker")
        print("CPU ms per request: gw = the gateway process, up = the upstream, cli = this load generator")
        print(f"{'mode':<16}{'path':<12}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'+p50 ms':>9}{'+p99 ms':>9}"
              f"{'rate/direct':>13}{'gw ms':>8}{'up ms':>8}{'cli ms':>8}")
        loads = [("sequential", 1, args.requests)] + [(f"conc {c}", c, args.requests * 2) for c in args.concurrency]
        for stream in (True, False):
            for load, conc, n in loads:
                label = f"{'stream' if stream else 'plain'} {load}"
                direct, direct_rps, (up_ms, cli_ms) = asyncio.run(measured_run(
                    upstream, args.model, n, conc, pids=(upstream_pid,), stream=stream))
                print(f"{label:<16}{'direct':<12}{direct_rps:>9.1f}{pct(direct, 50) * 1e3:>9.2f}"
                      f"{pct(direct, 99) * 1e3:>9.2f}{'':>9}{'':>9}{'':>13}{'':>8}{up_ms:>8.2f}{cli_ms:>8.2f}")
                for path, (url, pid) in gateways.items():
                    via, via_rps, (gw_ms, up_ms, cli_ms) = asyncio.run(measured_run(
                        url, args.model, n, conc, governed=path != "bare", pids=(pid, upstream_pid), stream=stream))
                    print(f"{label:<16}{path:<12}{via_rps:>9.1f}{pct(via, 50) * 1e3:>9.2f}"
                          f"{pct(via, 99) * 1e3:>9.2f}{(pct(via, 50) - pct(direct, 50)) * 1e3:>9.2f}"
                          f"{(pct(via, 99) - pct(direct, 99)) * 1e3:>9.2f}{via_rps / direct_rps:>13.2f}"
                          f"{gw_ms:>8.2f}{up_ms:>8.2f}{cli_ms:>8.2f}")

if __name__ == "__main__":
    main()
