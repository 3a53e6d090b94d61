"""Added latency of the unimodel gateway in front of an OpenAI-compatible upstream.

Starts the scripted upstream and `unimodel serve --engine upstream` as separate processes on 127.0.0.1,
sends the same streaming requests straight to the upstream and through unimodel (sequential, then at
concurrency 32), and prints p50/p99 latency, the added latency, and the ratio of request rates measured in
this one run. Figures only: nothing is asserted.

Besides the rates, the CPU time each process spent per request (``gw ms``: the gateway, ``up ms``: the
upstream, ``cli ms``: this load generator), read from /proc: on a machine where the load generator, the
upstream and the gateway share a few cores, the rate ratio says mostly how the cores were shared, while
the gateway's CPU per request against the upstream's says what the gateway costs wherever it runs.

First, in process and without HTTP, what the request pipeline itself costs per request: the server's
stages (auth, parse, validate, image policy, observers) and service around a null engine that yields a
22-event answer, against the bare minimum (the same events encoded as SSE frames).

    python benchmarks/gateway_overhead.py [--requests 300] [--concurrency 32] [--model bench-think]
                                          [--pipeline-only] [--litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import httpx
from _proc_stats import cpu_seconds
from _processes import pct, processes

KEY = "sk-bench-every-stage"


async def one(client: httpx.AsyncClient, url: str, model: str, governed: bool = False) -> tuple[float, float]:
    body = {"model": model, "messages": [{"role": "user", "content": "2+2?"}], "stream": True}
    # with every stage on: a key, and a fresh Idempotency-Key per request (each one claimed and stored)
    headers = {"Authorization": f"Bearer {KEY}", "Idempotency-Key": uuid.uuid4().hex} if governed else None
    t0 = time.perf_counter()
    ttft = None
    async with client.stream("POST", url + "/chat/completions", json=body, headers=headers) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if ttft is None and line.startswith("data:"):
                ttft = time.perf_counter() - t0
    return time.perf_counter() - t0, ttft or 0.0


async def run(url: str, model: str, requests: int, concurrency: int,
              governed: bool = False) -> tuple[list[float], float]:
    """See :func:`measured_run`, without the CPU figures."""
    lat, rps, _ = await measured_run(url, model, requests, concurrency, governed)
    return lat, rps


async def measured_run(url: str, model: str, requests: int, concurrency: int, governed: bool = False,
                       pids: tuple[int, ...] = ()) -> tuple[list[float], float, list[float]]:
    """``requests`` streamed requests from ``concurrency`` workers, each on its own connection (kept alive)."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(limits=limits, timeout=60) for _ in range(concurrency)]
    try:
        for client in clients:  # warm-up: connections, imports, caches
            await one(client, url, model, governed)
        queue = list(range(requests))
        lat: list[float] = []

        async def worker(client: httpx.AsyncClient) -> None:
            while queue:
                queue.pop()
                lat.append((await one(client, url, model, governed))[0])

        cpu0 = [cpu_seconds(pid) for pid in pids] + [time.process_time()]
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in clients))
        rate = requests / (time.perf_counter() - t0)
        cpu1 = [cpu_seconds(pid) for pid in pids] + [time.process_time()]
        return lat, rate, [(b - a) / requests * 1e3 for a, b in zip(cpu0, cpu1)]
    finally:
        for client in clients:
            await client.aclose()


async def pipeline_cost(requests: int, metrics: bool = False) -> tuple[float, float]:
    """Microseconds per streamed request: bare encoding, and the whole pipeline (both over a null engine);
    ``metrics``: with the /metrics observer beside the access log, as the server has it."""
    import json
    from collections.abc import AsyncIterator

    from unimodel.config import Settings
    from unimodel.engines.base import Engine, GenerationRequest
    from unimodel.protocol.events import ContentDelta, Event, Finish, Usage
    from unimodel.protocol.openai import ModelCard
    from unimodel.protocol.sse import frame
    from unimodel.server.app import build_stages
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
            yield Usage(12, 20)
            yield Finish("stop")

    engine = NullEngine()
    body = json.dumps({"model": "m", "stream": True, "max_tokens": 64, "temperature": 0.2,
                       "messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "What is 2+2?"}]}).encode()
    settings = Settings(engine="upstream", upstream="http://127.0.0.1:9/v1", api_keys=["sk-bench"])
    observers: list[Observer] = [AccessLog()]
    if metrics:
        from unimodel.telemetry.metrics import metrics_for

        measured = metrics_for(settings, engine)
        assert measured is not None
        observers.append(measured.observer)
    service = ChatService(engine, Pipeline(build_stages(settings, engine)), Observers(observers))
    headers = {"authorization": "Bearer sk-bench", "content-type": "application/json"}

    async def read() -> bytes:
        return body

    async def full() -> None:
        prepared = await service.prepare(Call(RequestContext("bench"), headers, read))
        async for _ in service.stream(prepared):
            pass

    async def bare() -> None:
        request = GenerationRequest("chatcmpl-bench", "m", [])
        encoder = ChunkEncoder(request.request_id, "m")
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
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--model", default="bench-think")
    ap.add_argument("--pipeline-only", action="store_true", help="only the in-process pipeline cost")
    ap.add_argument("--litellm", action="store_true", help="LiteLLM's proxy too (installed into its own venv "
                    "on first use: benchmarks/_litellm.py)")
    ap.add_argument("--smoke", action="store_true", help="a few requests, to check the code path (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.requests, args.concurrency = 10, 4

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
        print(f"{'mode':<12}{'path':<12}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'+p50 ms':>9}{'+p99 ms':>9}"
              f"{'rate/direct':>13}{'gw ms':>8}{'up ms':>8}{'cli ms':>8}")
        for label, conc, n in (("sequential", 1, args.requests), (f"conc {args.concurrency}", args.concurrency,
                                                                   args.requests * 2)):
            direct, direct_rps, (up_ms, cli_ms) = asyncio.run(measured_run(upstream, args.model, n, conc,
                                                                           pids=(upstream_pid,)))
            print(f"{label:<12}{'direct':<12}{direct_rps:>9.1f}{pct(direct, 50) * 1e3:>9.2f}"
                  f"{pct(direct, 99) * 1e3:>9.2f}{'':>9}{'':>9}{'':>13}{'':>8}{up_ms:>8.2f}{cli_ms:>8.2f}")
            for path, (url, pid) in gateways.items():
                via, via_rps, (gw_ms, up_ms, cli_ms) = asyncio.run(measured_run(
                    url, args.model, n, conc, governed=path != "bare", pids=(pid, upstream_pid)))
                print(f"{label:<12}{path:<12}{via_rps:>9.1f}{pct(via, 50) * 1e3:>9.2f}{pct(via, 99) * 1e3:>9.2f}"
                      f"{(pct(via, 50) - pct(direct, 50)) * 1e3:>9.2f}{(pct(via, 99) - pct(direct, 99)) * 1e3:>9.2f}"
                      f"{via_rps / direct_rps:>13.2f}{gw_ms:>8.2f}{up_ms:>8.2f}{cli_ms:>8.2f}")

if __name__ == "__main__":
    main()
