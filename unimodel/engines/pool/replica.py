"""One replica of the pool: its upstream client, its circuit breaker, its last metrics and our own counts.

A replica is ``active`` (takes new requests), ``draining`` (an operator asked: no new requests, the ones in
flight finish) or ``gone`` (discovery no longer lists it: the same, and it is closed once the last one ends).
It is usable when active, its upstream answers its probe (``GET /models``) and its breaker is not open.

Its load comes from its ``/metrics``, read every ``scrape_interval_s``. Between two reads the gateway adds what it
did itself: a request sent since the last read counts as held, one that ended as gone; what it holds beyond
the slots it was last seen full at counts as waiting (so a burst between two reads does not all land on one
replica's queue). Metrics older than two reads count as saturated: a replica that stopped
answering its metrics is taken to be too busy to answer them, not idle (llm-d's rule). A replica whose
``/metrics`` answers 404, 405, 401 or 403 (no vLLM: llama.cpp without ``--metrics``, a hosted API, a proxy that
guards it) is judged by the gateway's own count of requests in flight alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Optional

import aiohttp

from unimodel.engines.breaker import CircuitBreaker
from unimodel.engines.pool.load import MAX_METRICS_BYTES, ReplicaLoad, parse_vllm_metrics
from unimodel.engines.pool.prefix import PrefixIndex
from unimodel.engines.upstream import UpstreamEngine

log = logging.getLogger("unimodel.pool")

ReplicaState = Literal["active", "draining", "gone"]

#: a ``/metrics`` answer that will not change by asking again (none there, or not for us): a server that is no
#: vLLM, or one behind an API that guards it; counting it as stale would keep the replica saturated for ever
NO_METRICS_STATUSES = frozenset({401, 403, 404, 405})


@dataclass(frozen=True)
class Saturation:
    """When a replica has no room for another request: ``max_waiting`` requests in its queue, ``max_kv_usage``
    of its KV cache in use, ``max_inflight`` of ours in flight there (``None``: no such cap), or metrics older
    than ``stale_s``."""

    max_waiting: int = 8
    max_kv_usage: float = 0.95
    max_inflight: Optional[int] = None
    stale_s: float = 2.0


@dataclass(eq=False)
class Replica:
    name: str  # host:port (and the path, when not /v1): what the admin API and the metrics call it
    url: str  # its base URL (…/v1)
    engine: UpstreamEngine
    breaker: CircuitBreaker
    prefix: PrefixIndex
    drained: bool = False  # an operator drained it (the admin API)
    listed: bool = True  # discovery still lists it
    closed: bool = False  # its client is closed (it left the pool)
    inflight: int = 0
    load: Optional[ReplicaLoad] = None
    no_metrics: bool = False  # its /metrics answered 404: judged by our own counts alone
    sent_since_scrape: int = 0
    ended_since_scrape: int = 0
    slots: int = 0  # the most requests it was seen running while others waited (0: not seen full yet)
    served: int = 0  # requests sent to it, all told
    scrape_failures: int = 0
    started: Optional[asyncio.Task[None]] = field(default=None, repr=False)

    @property
    def state(self) -> ReplicaState:
        return "gone" if not self.listed else "draining" if self.drained else "active"

    # ---- judgement -----------------------------------------------------------------------------------------

    def usable(self) -> bool:
        return self.state == "active" and self.engine.is_ready() and self.breaker.state != "open"

    def stale(self, now: float, stale_s: float) -> bool:
        if self.no_metrics:
            return False
        return self.load is None or now - self.load.at > stale_s

    def waiting(self) -> float:
        """Requests in its queue now, as best we know. Once a read has shown it full (requests waiting beside
        the ones running), the most it was seen running is taken as its slots, and whatever it holds beyond
        them (the last read, plus ours sent since, less ours ended since) waits. Before that, ours sent since
        the last read count as waiting only when it already had a queue."""
        load = self.load
        if self.no_metrics or load is None:
            return 0.0
        queued = load.waiting or 0.0
        if self.slots:
            return max(0.0, self.busy() - self.slots)
        if queued > 0:
            queued += self.sent_since_scrape - self.ended_since_scrape
        return max(0.0, queued)

    def busy(self) -> float:
        """Requests it holds now (running and waiting), as best we know."""
        load = self.load
        if self.no_metrics or load is None or not load.known:
            return float(self.inflight)
        held = (load.running or 0.0) + (load.waiting or 0.0) + self.sent_since_scrape - self.ended_since_scrape
        return max(float(self.inflight), held)  # never fewer than ours: a read may miss ones sent as it was made

    def kv_usage(self) -> float:
        load = self.load
        return 0.0 if load is None or load.kv_usage is None else load.kv_usage

    def saturation(self, now: float, limits: Saturation) -> float:
        """How full it is, 0 (idle) to 1 (saturated) and beyond; 1 when its metrics are stale."""
        if self.stale(now, limits.stale_s):
            return 1.0
        share = max(self.waiting() / max(1, limits.max_waiting), self.kv_usage() / limits.max_kv_usage)
        if limits.max_inflight is not None:
            share = max(share, self.inflight / limits.max_inflight)
        return share

    def saturated(self, now: float, limits: Saturation) -> bool:
        return self.saturation(now, limits) >= 1.0

    # ---- our own counts ------------------------------------------------------------------------------------

    def sent(self) -> None:
        self.inflight += 1
        self.sent_since_scrape += 1
        self.served += 1

    def ended(self) -> None:
        self.inflight -= 1
        self.ended_since_scrape += 1

    # ---- metrics -------------------------------------------------------------------------------------------

    async def scrape(self, session: aiohttp.ClientSession, timeout: aiohttp.ClientTimeout,
                     clock: Callable[[], float]) -> None:
        """Read its ``/metrics`` once; a failure leaves the last read to go stale. Never raises but for
        cancellation."""
        if self.no_metrics:
            return
        url = f"{self.engine.root_url}/metrics"
        try:
            async with session.get(url, timeout=timeout, allow_redirects=False,
                                   headers=self.engine.auth_headers) as resp:
                if resp.status in NO_METRICS_STATUSES:
                    self.no_metrics = True
                    log.warning("replica %s has no /metrics we may read (HTTP %d): it is judged by the requests "
                                "in flight from this gateway alone", self.name, resp.status)
                    return
                if resp.status != 200:
                    raise _ScrapeFailed(f"HTTP {resp.status}")
                page = await resp.content.read(MAX_METRICS_BYTES + 1)
                if len(page) > MAX_METRICS_BYTES:
                    raise _ScrapeFailed(f"its /metrics is over {MAX_METRICS_BYTES} bytes")
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, _ScrapeFailed, ValueError) as exc:
            self.scrape_failures += 1
            if self.scrape_failures == 1 or self.scrape_failures % 60 == 0:
                log.info("reading the metrics of replica %s failed (%s)", self.name,
                         exc if isinstance(exc, _ScrapeFailed) else type(exc).__name__)
            return
        self.load = load = parse_vllm_metrics(page, clock())
        if load.waiting and load.running:  # full: what runs is what it can run (its max-num-seqs, or its KV)
            self.slots = max(self.slots, int(load.running))
        self.sent_since_scrape = self.ended_since_scrape = 0
        self.scrape_failures = 0

    def status(self, now: float, limits: Saturation) -> dict[str, object]:
        load = self.load
        return {
            "url": self.engine.display_url, "state": self.state, "ready": self.engine.is_ready(),
            "breaker": self.breaker.state, "inflight": self.inflight, "served": self.served,
            "waiting": None if load is None else load.waiting, "running": None if load is None else load.running,
            "kv_usage": None if load is None else load.kv_usage,
            "metrics_age_s": None if load is None else round(now - load.at, 3),
            "metrics": "none" if self.no_metrics else ("stale" if self.stale(now, limits.stale_s) else "fresh"),
            "saturation": round(self.saturation(now, limits), 3), "prefix_blocks": len(self.prefix),
        }


class _ScrapeFailed(Exception):
    pass
