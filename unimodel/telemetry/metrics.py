"""Prometheus metrics for ``GET /metrics``: one explicit registry per app, fed by the end-of-request observer.

Names follow OpenTelemetry's GenAI semantic conventions where one exists, in their Prometheus spelling
(``gen_ai.server.request.duration`` in seconds is ``gen_ai_server_request_duration_seconds``, the attribute
``gen_ai.request.model`` is the label ``gen_ai_request_model``), and are ``unimodel_*`` otherwise.

Per request, from :class:`MetricsObserver` (once, when the request is over: refused, answered, failed or
abandoned by its client):

* ``gen_ai_server_request_duration_seconds`` — every request; ``error_type`` is ``""`` when it succeeded;
* ``gen_ai_server_time_to_first_token_seconds`` — successful requests that produced a token (reasoning
  counts: it is the first token the model made);
* ``gen_ai_server_time_per_output_token_seconds`` — successful requests with two output tokens or more:
  (end − first token) / (output tokens − 1), as the conventions define it;
* ``gen_ai_client_token_usage`` — tokens per request, ``gen_ai_token_type`` ``input``/``output`` (the
  conventions define token usage on the client side only; a gateway is its upstream's client);
* ``unimodel_tokens_total`` — tokens by ``token_type`` ``prompt``/``reasoning``/``answer`` (answer = completion
  − reasoning), by key, route, model and effort: ``rate()`` of it is tokens/s for every engine;
* ``unimodel_requests_total`` — by key, route, model, effort, status and error type;
* ``unimodel_rate_limit_rejections_total`` — requests the limits stage refused (429), by key and route.

An idempotent replay counts as a request but adds no tokens and no TTFT (the model did no work). The gauges
read at scrape time (in flight, the local engine's queue and batch, breakers, upstream health, the request
log's writer) are in :mod:`unimodel.telemetry.metrics_gauges`.

Every label value is bounded: routes, key names and upstreams come from the configuration, models from the
engine's served list, efforts from the API's five levels, error types from the error tree; anything else
(a client's free text never reaches a label) becomes ``other``, or ``_OTHER`` for an error type (the
conventions' fallback). Buckets fit LLM latencies: the conventions' boundaries (10 ms doubling to 82 s),
with milliseconds below for refusals and minutes above for long reasoning.

prometheus_client does the instruments, the text formats and content negotiation; written here is only which
metrics, their bounded labels, and a cache of each label set's children (a request costs dict look-ups).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from unimodel.errors import UnimodelError
from unimodel.protocol.effort import EFFORTS
from unimodel.service.context import RequestContext

OPERATION = "chat"  # gen_ai.operation.name: the OpenAI chat API
PROVIDER = "unimodel"  # gen_ai.provider.name: the server answering (no well-known value fits a gateway)
OTHER = "other"
OTHER_ERROR = "_OTHER"  # error.type's fallback value in the conventions

#: seconds: 1 ms … 5 ms for refusals, then the conventions' 0.01 … 81.92, then up to 11 minutes
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                   40.96, 81.92, 163.84, 327.68, 655.36)
#: seconds per token: a GPU decodes in a few ms, then the conventions' 0.01 … 2.5
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
                2.5)
#: tokens: the conventions' powers of four, up to 1M (beyond any context length we serve)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)

#: error codes set per instance rather than per class (``code=`` at a raise), and the chat service's own
EXTRA_ERROR_CODES = frozenset({"route_not_found", "unknown_field", "http_error", "client_closed"})


def known_error_codes() -> frozenset[str]:
    """Every ``code`` of the error tree (walked when called: call it once every module is imported)."""
    codes, todo = set(EXTRA_ERROR_CODES), [UnimodelError]
    while todo:
        cls = todo.pop()
        codes.add(cls.code)
        todo.extend(cls.__subclasses__())
    return frozenset(codes)


class LabelBounds:
    """Maps what a request carries to a bounded label value. ``models`` is asked again for a name it did not
    know, at most every ``refresh_s`` (an upstream's served list is discovered after start-up)."""

    def __init__(self, *, routes: Iterable[str], keys: Iterable[str], models: Callable[[], Iterable[str]],
                 error_types: Optional[Iterable[str]] = None, refresh_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.routes = frozenset(routes)
        self.keys = frozenset(keys)
        self.efforts = frozenset(EFFORTS)
        self.error_types = frozenset(error_types) if error_types is not None else known_error_codes()
        self._models_source = models
        self._models: frozenset[str] = frozenset()
        self._refresh_s = refresh_s
        self._clock = clock
        self._refreshed_at = -float("inf")

    @staticmethod
    def _bounded(value: Optional[str], known: frozenset[str], other: str = OTHER) -> str:
        if value is None:
            return ""
        return value if value in known else other

    def add_keys(self, names: Iterable[str]) -> None:
        """Key names that become labels too (keys added while serving: ``server/reload.py``); a name stays known
        once seen, so a key's series keeps its label after it is removed, bounded by the keys ever configured."""
        self.keys = self.keys | frozenset(names)

    def route(self, value: Optional[str]) -> str:
        return self._bounded(value, self.routes)

    def key(self, value: Optional[str]) -> str:
        return self._bounded(value, self.keys)

    def effort(self, value: Optional[str]) -> str:
        return self._bounded(value, self.efforts)

    def error_type(self, value: Optional[str]) -> str:
        return self._bounded(value, self.error_types, OTHER_ERROR)

    @staticmethod
    def status(value: int) -> str:
        return str(value) if 100 <= value <= 599 else OTHER

    def model(self, value: Optional[str]) -> str:
        if value is None:
            return ""
        if value not in self._models and self._clock() - self._refreshed_at >= self._refresh_s:
            self._refreshed_at = self._clock()
            try:
                self._models = frozenset(self._models_source())
            except Exception:  # an engine that cannot list its models now: keep the names known so far
                pass
        return value if value in self._models else OTHER


@dataclass(slots=True)
class _Outcome:
    """The children of one outcome's label set (prometheus_client's ``labels()`` validates and locks)."""

    requests: Any
    duration: Any


@dataclass(slots=True)
class _Work:
    """The children of one (key, route, model, effort): made on the first request that produced something,
    so refusals add no series of zeros."""

    ttft: Any
    tpot: Any
    input_usage: Any
    output_usage: Any
    prompt_tokens: Any
    reasoning_tokens: Any
    answer_tokens: Any
    cached_tokens: Any


class MetricsObserver:
    """The end-of-request observer: cheap (dict look-ups and a few increments), on the event loop."""

    def __init__(self, registry: CollectorRegistry, bounds: LabelBounds) -> None:
        self.bounds = bounds
        gen_ai = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "route",
                  "reasoning_effort")
        ours = ("key_name", "route", "model", "reasoning_effort")
        self.duration = Histogram(
            "gen_ai_server_request_duration_seconds", "Time from a request's arrival to its end (last token, refusal "
            "or failure); error_type is empty when it succeeded.", (*gen_ai, "error_type"),
            buckets=LATENCY_BUCKETS, registry=registry)
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds", "Time from arrival to the first token (reasoning or "
            "answer) of successful requests.", gen_ai, buckets=LATENCY_BUCKETS, registry=registry)
        self.tpot = Histogram(
            "gen_ai_server_time_per_output_token_seconds", "Time per output token after the first, of successful "
            "requests.", gen_ai, buckets=TPOT_BUCKETS, registry=registry)
        self.token_usage = Histogram(
            "gen_ai_client_token_usage", "Tokens per request: input (prompt) and output (reasoning and answer).",
            (*gen_ai, "gen_ai_token_type"), buckets=TOKEN_BUCKETS, registry=registry)
        self.tokens = Counter(
            "unimodel_tokens_total", "Tokens by type: prompt, reasoning, answer (rate() is tokens/s).",
            (*ours, "token_type"), registry=registry)
        self.cached_tokens = Counter(
            "unimodel_prompt_cached_tokens_total", "Prompt tokens the engine read from its prefix cache (a part of "
            "the prompt tokens; counted where the engine reports it).", ours, registry=registry)
        self.requests = Counter(
            "unimodel_requests_total", "Requests by key, route, model, effort, status and error type.",
            (*ours, "status", "error_type"), registry=registry)
        self.rate_limited = Counter(
            "unimodel_rate_limit_rejections_total", "Requests the rate limits refused (429), by key and route.",
            ("key_name", "route"), registry=registry)
        self._outcomes: dict[tuple[str, ...], _Outcome] = {}
        self._work: dict[tuple[str, ...], _Work] = {}

    def _outcome(self, key: str, route: str, model: str, effort: str, status: str, error: str) -> _Outcome:
        labels = (key, route, model, effort, status, error)
        outcome = self._outcomes.get(labels)
        if outcome is None:
            outcome = self._outcomes[labels] = _Outcome(
                requests=self.requests.labels(key, route, model, effort, status, error),
                duration=self.duration.labels(OPERATION, PROVIDER, model, route, effort, error))
        return outcome

    def _work_of(self, key: str, route: str, model: str, effort: str) -> _Work:
        labels = (key, route, model, effort)
        work = self._work.get(labels)
        if work is None:
            gen_ai = (OPERATION, PROVIDER, model, route, effort)
            work = self._work[labels] = _Work(
                ttft=self.ttft.labels(*gen_ai),
                tpot=self.tpot.labels(*gen_ai),
                input_usage=self.token_usage.labels(*gen_ai, "input"),
                output_usage=self.token_usage.labels(*gen_ai, "output"),
                prompt_tokens=self.tokens.labels(*labels, "prompt"),
                reasoning_tokens=self.tokens.labels(*labels, "reasoning"),
                answer_tokens=self.tokens.labels(*labels, "answer"),
                cached_tokens=self.cached_tokens.labels(*labels))
        return work

    def request_finished(self, ctx: RequestContext) -> None:
        b = self.bounds
        key, route, model = b.key(ctx.key_name), b.route(ctx.route), b.model(ctx.model)
        effort = b.effort(ctx.effort)
        outcome = self._outcome(key, route, model, effort, b.status(ctx.status), b.error_type(ctx.error_type))
        outcome.requests.inc()
        end = ctx.finished_at if ctx.finished_at is not None else time.perf_counter()
        outcome.duration.observe(end - ctx.received_at)
        if ctx.limits == "refused":
            self.rate_limited.labels(key, route).inc()
        if ctx.idempotency == "replayed":
            return  # answered from the store: no tokens made, and its "first token" says nothing of the model
        usage, first = ctx.usage, ctx.first_token_at
        succeeded = first is not None and ctx.status == 200 and ctx.error_type is None
        if usage is None and not succeeded:
            return
        work = self._work_of(key, route, model, effort)
        if usage is not None:
            work.input_usage.observe(usage.prompt_tokens)
            work.output_usage.observe(usage.completion_tokens)
            work.prompt_tokens.inc(usage.prompt_tokens)
            work.reasoning_tokens.inc(usage.reasoning_tokens)
            work.answer_tokens.inc(max(0, usage.completion_tokens - usage.reasoning_tokens))
            if usage.cached_tokens:
                work.cached_tokens.inc(usage.cached_tokens)
        if succeeded:
            assert first is not None
            work.ttft.observe(first - ctx.received_at)
            if usage is not None and usage.completion_tokens > 1:
                work.tpot.observe(max(0.0, end - first) / (usage.completion_tokens - 1))


class Metrics:
    """One app's registry: the process collectors (registered on it explicitly), the observer, and the
    scrape-time collectors added with :meth:`watch`."""

    def __init__(self, bounds: LabelBounds, *, process: bool = True) -> None:
        self.registry = CollectorRegistry()
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
        self.observer = MetricsObserver(self.registry, bounds)

    def watch(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (OpenMetrics when the scraper asks for it, else the text format) and its type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
