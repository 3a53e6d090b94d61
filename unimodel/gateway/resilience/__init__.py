"""Resilience: per-route timeouts, retries before the first event, a circuit breaker per upstream, fallback
and canary upstreams — the last stage of the pipeline, wrapped around the engine call (``stage.py``), with its
breaker (``breaker.py``), retry verdicts and backoff (``retry.py``), and the upstreams it chooses among and
their order (``upstreams.py``). The stage owns no engine: the composition root (``unimodel/compose.py``) gives
it the server's engine set's extras, which the app starts and closes."""

from unimodel.gateway.resilience.breaker import CircuitBreaker
from unimodel.gateway.resilience.retry import Backoff, Verdict, classify
from unimodel.gateway.resilience.stage import UPSTREAM_HEADER, ResiliencePolicy, ResilienceStage
from unimodel.gateway.resilience.upstreams import Upstream, UpstreamPool

__all__ = ["UPSTREAM_HEADER", "Backoff", "CircuitBreaker", "ResiliencePolicy", "ResilienceStage", "Upstream",
           "UpstreamPool", "Verdict", "classify"]
