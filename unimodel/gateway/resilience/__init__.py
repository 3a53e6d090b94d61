"""Resilience: per-route timeouts, retries before the first event, a circuit breaker per upstream, fallback
and canary upstreams — the last stage of the pipeline, wrapped around the engine call (``stage.py``), with the
upstreams it chooses among and their order (``upstreams.py``). Its circuit breaker (``engines/breaker.py``) and
its retry verdicts and backoff (``engines/verdicts.py``) live a layer down, since the upstream pool
(``engines/pool/``) judges its replicas by the same rules. The stage owns no engine: the composition root (``unimodel/compose.py``) gives
it the server's engine set's extras, which the app starts and closes."""

from unimodel.engines.breaker import CircuitBreaker
from unimodel.engines.verdicts import Backoff, Verdict, classify
from unimodel.gateway.resilience.stage import UPSTREAM_HEADER, ResiliencePolicy, ResilienceStage
from unimodel.gateway.resilience.upstreams import Upstream, UpstreamPool

__all__ = ["UPSTREAM_HEADER", "Backoff", "CircuitBreaker", "ResiliencePolicy", "ResilienceStage", "Upstream",
           "UpstreamPool", "Verdict", "classify"]
