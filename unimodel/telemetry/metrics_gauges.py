"""Gauges read when Prometheus scrapes: nothing is kept between scrapes, everything is asked of its owner.

:class:`ServingCollector` is a prometheus_client custom collector; each section reads one owner and a failing
section is logged and left out, so a scrape never fails:

* the chat service: ``unimodel_requests_in_flight`` (requests between their start and their end);
* the event loop: ``unimodel_asyncio_tasks`` (tasks not yet done, the scrape's own included; a count that keeps
  growing under steady load is a leak: ``benchmarks/soak.py`` reads it). Left out when the scrape runs off the
  loop's thread;
* the engine: ``unimodel_engine_ready``; for an engine with a batch of its own, its ``Engine.stats()``:
  ``unimodel_engine_queue_depth`` (requests waiting for a slot), ``unimodel_engine_running_sequences``,
  ``unimodel_engine_max_sequences``, ``unimodel_engine_batch_occupancy`` (running / max, 0 to 1),
  ``unimodel_engine_decode_steps_total`` and ``unimodel_engine_generated_tokens_total`` (``rate()`` of it is
  the engine's tokens/s). These are what an autoscaler scales on (``deploy/``);
* an upstream pool's replicas, queue and choices (``metrics_pool.py``; ``unimodel_pool_saturation`` is what
  KEDA scales the vLLM replicas on);
* the resilience stage's ``status()``: per upstream, ``unimodel_upstream_breaker_state`` (one series per state,
  1 for the current one: ``closed``, ``open``, ``half_open``, ``disabled``), ``unimodel_upstream_breaker_failures``
  (the current run), ``unimodel_upstream_breaker_opened_total`` and ``unimodel_upstream_up`` (the primary: the
  engine is ready; another upstream: its last probe answered);
* the limits stage's ``status()``: ``unimodel_rate_limit_store_failures_total`` by outcome (Redis down:
  ``admitted_unchecked`` or ``refused_unavailable``; ``release_failed``);
* the request log's writer: ``unimodel_request_log_buffered_rows`` (in memory, not yet written or spilled),
  ``unimodel_request_log_database_up`` and the row counters ``unimodel_request_log_{written,replayed,spilled,
  rejected,dropped}_rows_total``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from unimodel.gateway.resilience.upstreams import PRIMARY
from unimodel.telemetry.metrics_pool import pool_metrics  # the resilience stage's name for our own engine

if TYPE_CHECKING:
    from unimodel.engines.base import Engine
    from unimodel.service.pipeline import Stage
    from unimodel.telemetry.request_log import RequestLog

log = logging.getLogger("unimodel.metrics")

BREAKER_STATES = ("closed", "open", "half_open", "disabled")


class ServingCollector:
    """The scrape-time gauges of one app (see the module docstring)."""

    def __init__(self, *, in_flight: Callable[[], int], engine: "Engine", stages: Sequence["Stage"] = (),
                 request_log: Optional["RequestLog"] = None) -> None:
        self.in_flight = in_flight
        self.engine = engine
        self.stages = {stage.name: stage for stage in stages}
        self.request_log = request_log
        self._failed: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        for section in (self._service, self._event_loop, self._engine, self._pool, self._upstreams, self._limits,
                        self._request_log):
            try:
                families = list(section())
            except Exception:
                if section.__name__ not in self._failed:  # logged once per section, not once per scrape
                    self._failed.add(section.__name__)
                    log.exception("metrics: reading %s failed; left out of the scrape", section.__name__.strip("_"))
                continue
            yield from families

    def _service(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("unimodel_requests_in_flight", "Chat requests started and not yet over.",
                                value=self.in_flight())

    def _event_loop(self) -> Iterator[Metric]:
        try:
            tasks = asyncio.all_tasks()
        except RuntimeError:  # no running loop in this thread: nothing honest to report
            return
        yield GaugeMetricFamily("unimodel_asyncio_tasks", "asyncio tasks not yet done in the server's event loop.",
                                value=len(tasks))

    def _engine(self) -> Iterator[Metric]:
        engine = self.engine
        ready = GaugeMetricFamily("unimodel_engine_ready", "1 when the engine would serve a request now.",
                                  labels=["engine"])
        ready.add_metric([engine.kind], 1.0 if engine.is_ready() else 0.0)
        yield ready
        stats = engine.stats() if engine.is_ready() else None
        if stats is None:  # an upstream's batch is the upstream's to report
            return
        slots = int(stats["max_sequences"])
        yield GaugeMetricFamily("unimodel_engine_queue_depth", "Requests waiting for a slot in the local batch.",
                                value=stats["waiting"])
        yield GaugeMetricFamily("unimodel_engine_running_sequences", "Sequences in the local batch.",
                                value=stats["running"])
        yield GaugeMetricFamily("unimodel_engine_max_sequences", "Slots of the local batch (--max-num-seqs).",
                                value=slots)
        yield GaugeMetricFamily("unimodel_engine_batch_occupancy", "Running sequences / slots (0 to 1).",
                                value=stats["running"] / max(1, slots))
        yield CounterMetricFamily("unimodel_engine_decode_steps", "Decode steps the local engine ran.",
                                  value=stats["steps"])
        yield CounterMetricFamily("unimodel_engine_generated_tokens", "Tokens the local engine generated "
                                  "(rate() is its tokens/s).", value=stats["tokens"])

    def _pool(self) -> Iterator[Metric]:
        status = self.engine.pool_status()
        if status is not None:
            yield from pool_metrics(status)

    def _upstreams(self) -> Iterator[Metric]:
        stage = self.stages.get("resilience")
        status = stage.status() if stage is not None else None
        if not status:
            return
        state = GaugeMetricFamily("unimodel_upstream_breaker_state", "1 for the circuit breaker's current state.",
                                  labels=["upstream", "state"])
        failures = GaugeMetricFamily("unimodel_upstream_breaker_failures", "Upstream failures in the current run.",
                                     labels=["upstream"])
        opened = CounterMetricFamily("unimodel_upstream_breaker_opened", "Times the circuit breaker opened.",
                                     labels=["upstream"])
        up = GaugeMetricFamily("unimodel_upstream_up", "1 when the upstream answers (the primary: the engine is "
                               "ready; others: their last probe).", labels=["upstream"])
        for name, upstream in status.get("upstreams", {}).items():
            current = str(upstream.get("breaker", "disabled")).replace("-", "_")
            for s in BREAKER_STATES:
                state.add_metric([name, s], 1.0 if s == current else 0.0)
            if current != "disabled":
                failures.add_metric([name], float(upstream.get("failures", 0)))
                opened.add_metric([name], float(upstream.get("opened", 0)))
            healthy = self.engine.is_ready() if name == PRIMARY else bool(upstream.get("ready", False))
            up.add_metric([name], 1.0 if healthy else 0.0)
        yield from (state, failures, opened, up)

    def _limits(self) -> Iterator[Metric]:
        stage = self.stages.get("limits")
        status = stage.status() if stage is not None else None
        if not status:
            return
        failures = CounterMetricFamily("unimodel_rate_limit_store_failures", "Requests decided without the limits' "
                                       "store (Redis down), and reservations not given back.", labels=["outcome"])
        for outcome in ("admitted_unchecked", "refused_unavailable", "release_failed"):
            failures.add_metric([outcome], float(status.get(outcome, 0)))
        yield failures

    def _request_log(self) -> Iterator[Metric]:
        if self.request_log is None:
            return
        writer = self.request_log.writer
        yield GaugeMetricFamily("unimodel_request_log_buffered_rows", "Rows in memory, not yet in the database "
                                "nor spilled.", value=writer.buffered)
        if writer.db_up is not None:
            yield GaugeMetricFamily("unimodel_request_log_database_up", "1 when the last write to the log "
                                    "database succeeded.", value=1.0 if writer.db_up else 0.0)
        for name, value, what in (
                ("written", writer.written, "Rows stored in the database (replayed ones included)."),
                ("replayed", writer.replayed, "Rows stored from the spill file."),
                ("spilled", writer.spilled, "Rows written to the spill file while the database was down or slow."),
                ("rejected", writer.rejected, "Rows the database refused for their data."),
                ("dropped", writer.dropped, "Rows lost (the writer stuck, or the spill file not writable).")):
            yield CounterMetricFamily(f"unimodel_request_log_{name}_rows", what, value=value)
