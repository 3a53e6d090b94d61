"""A simulated vLLM replica: vLLM's HTTP surface where the upstream pool looks, over a made-up engine with a
scheduler and a finite, prefix-cached KV cache (``sim_vllm_engine.py`` says what is modelled and how).

So the pool's balancing can be tested and measured on a machine without GPUs: time to first token grows
with the prompt tokens the replica has not cached, requests queue past ``--max-num-seqs``, and ``/metrics``
speaks vLLM 0.32's Prometheus text with its names and labels (``model_name``, ``engine="0"``, histograms a
parser must skip), made by prometheus_client as vLLM's is. Routes:

- ``GET /health`` (200), ``GET /v1/models`` (vLLM's shape, with ``max_model_len``), ``GET /metrics``;
- ``POST /v1/chat/completions``, streamed (SSE, a usage chunk with ``stream_options.include_usage``,
  ``[DONE]``) or not; ``usage.prompt_tokens_details.cached_tokens`` always (real vLLM needs
  ``--enable-prompt-tokens-details``); ``priority`` honoured under ``--scheduling-policy priority``; the
  answer is ``max_tokens`` words (default ``--default-max-tokens``); past ``--max-num-queued-reqs`` a 503 as
  vLLM's, a prompt over ``--max-model-len`` a 400 as vLLM's;
- faults, for tests: ``POST /admin/faults`` with any of ``{"die": true}`` (cut every open connection and stop
  serving: the script exits 3), ``{"die_after_tokens": N}`` (the same once N answer tokens were sent in all),
  ``{"metrics": "live"|"frozen"|"hang"|"error"}`` (``/metrics`` repeats its last text, never answers, or
  answers 500), ``{"refuse_status": 503}`` (chat completions answer that status; null: serve again),
  ``{"healthy": false}`` (``/health`` answers 503); ``GET /admin/state``: queue, cache and counters as JSON.

    python tests/support/sim_vllm.py --port 0 [--max-num-seqs 8] [--num-blocks 4096] [--block-size 16]
        [--prefill-ms-per-token 0.05] [--decode-ms 10] [--scheduling-policy fcfs|priority] [--fail-after N]

prints ``sim-vllm ready http://127.0.0.1:PORT/v1`` once it listens, and stops cleanly on SIGTERM. In a test:
``async with SimVllm(SimConfig(...)) as sim: sim.base_url``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional

import orjson
from aiohttp import web
from prometheus_client import (CollectorRegistry, Counter, Gauge, GCCollector, Histogram, PlatformCollector,
                               ProcessCollector, generate_latest)

if __package__ in (None, ""):  # run as a script: make `tests.support` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support.sim_vllm_engine import (DONE, QueueFull, SimConfig, SimEngine, SimRequest, render,
                                           tokenize)

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
TOKEN_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000)
MAX_BODY = 32 * 1024 * 1024


class Stats:
    """vLLM's metrics (names, help texts, labels as vLLM 0.32 has them), in a registry of their own."""

    def __init__(self, engine: "SimEngine", config: SimConfig) -> None:
        self.registry = registry = CollectorRegistry()
        self.query_tokens = self.hit_tokens = 0
        for collector in (GCCollector, PlatformCollector, ProcessCollector):
            collector(registry=registry)
        labels = {"engine": "0", "model_name": config.model}
        names = list(labels)

        def gauge(name: str, doc: str, read: Any) -> None:
            Gauge(name, doc, names, registry=registry).labels(**labels).set_function(read)

        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, names, registry=registry).labels(**labels)

        def histogram(name: str, doc: str, buckets: Any) -> Any:
            return Histogram(name, doc, names, buckets=buckets, registry=registry).labels(**labels)

        gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
              lambda: len(engine.running))
        gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", lambda: engine.num_waiting)
        gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", engine.kv.usage)
        self.queries = counter("vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried "
                               "tokens.")
        self.hits = counter("vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.")
        counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        success = Counter("vllm:request_success", "Count of successfully processed requests.",
                          [*names, "finished_reason"], registry=registry)
        for reason in ("stop", "length", "abort", "error", "repetition"):
            success.labels(**labels, finished_reason=reason)
        self.length = success.labels(**labels, finished_reason="length")
        self.request_prompt = histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.",
                                        TOKEN_BUCKETS)
        self.ttft = histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              TTFT_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             E2E_BUCKETS)
        self.queue_time = histogram("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase "
                                    "for request.", E2E_BUCKETS)
        Gauge("vllm:cache_config_info", "Information of the LLMEngine CacheConfig",
              ["block_size", "enable_prefix_caching", "engine", "num_gpu_blocks"], registry=registry).labels(
            block_size=str(config.block_size), enable_prefix_caching="True", engine="0",
            num_gpu_blocks=str(config.num_blocks)).set(1)

    def admitted(self, request: SimRequest) -> None:
        prompt = len(request.prompt_tokens)
        self.query_tokens += prompt
        self.hit_tokens += request.cached_tokens
        self.queries.inc(prompt)
        self.hits.inc(request.cached_tokens)
        self.prompt_tokens.inc(prompt - request.cached_tokens)
        self.request_prompt.observe(prompt)
        self.queue_time.observe(time.monotonic() - request.arrival)

    def finished(self, request: SimRequest, now: float) -> None:
        self.generation_tokens.inc(request.generated)
        self.length.inc()
        self.ttft.observe((request.first_token_at or now) - request.arrival)
        self.e2e.observe(now - request.arrival)


@dataclass
class Faults:
    die_after_tokens: Optional[int] = None
    metrics: str = "live"  # live | frozen | hang | error
    refuse_status: Optional[int] = None
    healthy: bool = True


def _error(status: int, message: str, err_type: str) -> web.Response:
    """vLLM's error body."""
    body = {"error": {"message": message, "type": err_type, "param": None, "code": status}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class SimVllm:
    """One simulated replica on 127.0.0.1:``port`` (0: a free one), started and stopped in the running loop."""

    def __init__(self, config: Optional[SimConfig] = None, port: int = 0, default_max_tokens: int = 16) -> None:
        self.config = config or SimConfig()
        self.port = port
        self.default_max_tokens = default_max_tokens
        self.faults = Faults()
        self.dead = asyncio.Event()
        self.engine: SimEngine
        self.stats: Stats
        self._runner: Optional[web.AppRunner] = None
        self._in_flight: dict[int, Any] = {}  # id(request) -> its transport
        self._frozen_metrics = b""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        self.engine = SimEngine(self.config, None)
        self.stats = self.engine.stats = Stats(self.engine, self.config)
        self.engine.start()
        app = web.Application(client_max_size=MAX_BODY)
        app.add_routes([web.get("/health", self._health), web.get("/v1/models", self._models),
                        web.get("/metrics", self._metrics), web.post("/v1/chat/completions", self._chat),
                        web.post("/admin/faults", self._faults), web.get("/admin/state", self._state)])
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, backlog=1024)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await self.engine.stop()
            await runner.cleanup()

    async def __aenter__(self) -> "SimVllm":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def kill(self) -> None:
        """Die as a crashed replica does: every open connection cut mid-answer, nothing served any more."""
        for transport in list(self._in_flight.values()):
            if transport is not None:
                transport.abort()
        self.dead.set()
        asyncio.get_running_loop().create_task(self.stop())

    def set_faults(self, **changes: Any) -> None:
        if changes.pop("die", False):
            self.kill()
        known = {f.name for f in fields(Faults)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown faults: {sorted(unknown)}")
        if changes.get("metrics", self.faults.metrics) not in ("live", "frozen", "hang", "error"):
            raise ValueError("metrics is one of live, frozen, hang, error")
        if changes.get("metrics") == "frozen" and self.faults.metrics != "frozen":
            self._frozen_metrics = generate_latest(self.stats.registry)
        for name, value in changes.items():
            setattr(self.faults, name, value)

    # ---- routes ---------------------------------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.faults.healthy else 503)

    async def _models(self, request: web.Request) -> web.Response:
        card = {"id": self.config.model, "object": "model", "created": int(time.time()), "owned_by": "vllm",
                "root": self.config.model, "parent": None, "max_model_len": self.config.max_model_len,
                "permission": []}
        return web.json_response({"object": "list", "data": [card]}, dumps=lambda v: orjson.dumps(v).decode())

    async def _metrics(self, request: web.Request) -> web.Response:
        mode = self.faults.metrics
        if mode == "hang":
            while self.faults.metrics == "hang":
                await asyncio.sleep(0.05)  # the scraper's timeout ends this; so does leaving the mode
        if mode == "error":
            return web.Response(status=500, text="Internal Server Error")
        body = self._frozen_metrics if mode == "frozen" else generate_latest(self.stats.registry)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def _faults(self, request: web.Request) -> web.Response:
        try:
            self.set_faults(**(await request.json()))
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc), "BadRequestError")
        return web.json_response({"ok": True})

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response({"running": len(self.engine.running), "waiting": self.engine.num_waiting,
                                  "kv_cache_usage": self.engine.kv.usage(), "tokens_sent": self.engine.tokens_sent,
                                  "prefix_queries": self.stats.query_tokens,
                                  "prefix_hits": self.stats.hit_tokens})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        if self.faults.refuse_status is not None:
            return _error(self.faults.refuse_status, "refused (simulated fault)", "ServiceUnavailableError")
        try:
            body = orjson.loads(await request.read())
            messages = body["messages"]
            max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or self.default_max_tokens)
            priority = int(body.get("priority") or 0)
            if not isinstance(messages, list) or max_tokens < 1:
                raise ValueError
        except (ValueError, KeyError, TypeError):
            return _error(400, "invalid request", "BadRequestError")
        if body.get("model") != self.config.model:
            return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        prompt = tokenize(render(messages))
        if len(prompt) + max_tokens > self.config.max_model_len:
            return _error(400, f"This model's maximum context length is {self.config.max_model_len} tokens. "
                          f"However, you requested {len(prompt) + max_tokens} tokens ({len(prompt)} in the "
                          f"messages, {max_tokens} in the completion).", "BadRequestError")
        sim = SimRequest(prompt, max_tokens, priority)
        try:
            self.engine.submit(sim)
        except QueueFull:
            return _error(503, "The engine is currently busy and cannot accept new requests. Please try again "
                          "later or on a different instance.", "Service Unavailable")
        try:
            self._in_flight[id(request)] = request.transport
            if body.get("stream"):
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                return await self._stream(request, sim, include_usage)
            return await self._whole(sim)
        finally:
            self._in_flight.pop(id(request), None)
            self.engine.abort(sim)

    def _sent(self) -> None:
        limit = self.faults.die_after_tokens
        if limit is not None and self.engine.tokens_sent >= limit:
            self.kill()

    def _usage(self, sim: SimRequest) -> dict[str, Any]:
        prompt = len(sim.prompt_tokens)
        return {"prompt_tokens": prompt, "total_tokens": prompt + sim.generated, "completion_tokens": sim.generated,
                "prompt_tokens_details": {"cached_tokens": sim.cached_tokens}}

    async def _whole(self, sim: SimRequest) -> web.Response:
        text = []
        while (token := await sim.tokens.get()) is not DONE:
            text.append(token)
            self._sent()
        body = {"id": f"chatcmpl-{uuid.uuid4().hex[:16]}", "object": "chat.completion", "created": int(time.time()),
                "model": self.config.model, "choices": [{"index": 0, "message": {"role": "assistant",
                "content": "".join(text), "reasoning": None, "tool_calls": []}, "logprobs": None,
                "finish_reason": "length", "stop_reason": None}], "usage": self._usage(sim)}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _stream(self, request: web.Request, sim: SimRequest, include_usage: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        try:
            await response.prepare(request)
        except ConnectionError:
            return response  # the client left before the answer began: the caller aborts the request
        head = {"id": f"chatcmpl-{uuid.uuid4().hex[:16]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": self.config.model}

        def frame(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return b"data: " + orjson.dumps({**head, "choices": choices, **extra}) + b"\n\n"

        try:
            await response.write(frame([{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "logprobs": None, "finish_reason": None}]))
            while (token := await sim.tokens.get()) is not DONE:
                last = sim.finished and sim.tokens.qsize() == 1  # DONE is next
                await response.write(frame([{"index": 0, "delta": {"content": token}, "logprobs": None,
                                             "finish_reason": "length" if last else None}]))
                self._sent()
            if include_usage:
                await response.write(frame([], usage=self._usage(sim)))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except ConnectionError:
            pass  # the client left (or we died): the caller aborts the request
        return response


def _config(argv: Optional[list[str]] = None) -> tuple[SimConfig, int, int, Optional[int]]:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--port", type=int, default=0, help="0: a free port (the ready line says which)")
    ap.add_argument("--default-max-tokens", type=int, default=16)
    ap.add_argument("--fail-after", type=int, default=None, help="die (cut every stream, exit 3) after this many "
                    "answer tokens in all")
    d = SimConfig()
    ap.add_argument("--served-model-name", dest="model", default=d.model)
    ap.add_argument("--max-model-len", type=int, default=d.max_model_len)
    ap.add_argument("--max-num-seqs", type=int, default=d.max_num_seqs)
    ap.add_argument("--max-num-batched-tokens", type=int, default=d.max_num_batched_tokens)
    ap.add_argument("--max-num-queued-reqs", type=int, default=d.max_num_queued_reqs)
    ap.add_argument("--scheduling-policy", choices=["fcfs", "priority"], default=d.scheduling_policy)
    ap.add_argument("--block-size", type=int, default=d.block_size)
    ap.add_argument("--num-blocks", type=int, default=d.num_blocks)
    ap.add_argument("--prefill-ms-per-token", type=float, default=d.prefill_ms_per_token)
    ap.add_argument("--decode-ms", type=float, default=d.decode_ms, help="one scheduler step (all running advance)")
    args = vars(ap.parse_args(argv))
    port, max_tokens, fail_after = args.pop("port"), args.pop("default_max_tokens"), args.pop("fail_after")
    return SimConfig(**args), port, max_tokens, fail_after


async def _main() -> int:
    config, port, max_tokens, fail_after = _config()
    sim = SimVllm(config, port, max_tokens)
    await sim.start()
    if fail_after is not None:
        sim.set_faults(die_after_tokens=fail_after)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"sim-vllm ready {sim.base_url}", flush=True)
    stopped, dead = asyncio.ensure_future(stop.wait()), asyncio.ensure_future(sim.dead.wait())
    await asyncio.wait([stopped, dead], return_when=asyncio.FIRST_COMPLETED)
    if sim.dead.is_set():
        os._exit(3)  # as a crash: no clean shutdown
    await sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main()))
