"""The resilience stage from the settings: the policy, the breakers, and the extra upstream engines."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Optional

from unimodel.engines.factory import upstream_engine
from unimodel.engines.upstream import UpstreamEngine

from unimodel.gateway.resilience.breaker import CircuitBreaker
from unimodel.gateway.resilience.stage import ResiliencePolicy, ResilienceStage
from unimodel.gateway.resilience.upstreams import (
    CANARY,
    PRIMARY,
    Upstream,
    UpstreamPool,
    fallback_name,
)

if TYPE_CHECKING:
    from unimodel.config import Settings


def engine_maker(settings: "Settings") -> Callable[..., UpstreamEngine]:
    """Extra upstreams get the primary's settings. Behind an upstream primary they ask for the same upstream
    model name; behind a local or vLLM primary, for the name the client used (a local path means nothing to a
    remote server). They send ``--upstream-api-key`` unless a named upstream has its own key."""
    upstream_primary = settings.engine == "upstream"
    served = (settings.served_model_name or settings.model) if upstream_primary else None
    model = settings.model if upstream_primary else None

    def make(url: str, api_key: Optional[str] = None) -> UpstreamEngine:
        return upstream_engine(settings, url, served_model_name=served, upstream_model=model, api_key=api_key)

    return make


def build_resilience(settings: "Settings") -> ResilienceStage:
    """The stage; the primary is whatever engine call the pipeline hands to its ``wrap``."""
    engine = engine_maker(settings)

    def breaker(name: str) -> CircuitBreaker:
        return CircuitBreaker(name, failures=settings.breaker_failures, window_s=settings.breaker_window_s,
                              cooldown_s=settings.breaker_cooldown_s)

    primary = Upstream(PRIMARY, breaker(PRIMARY), settings.retries)
    fallbacks = [Upstream(fallback_name(i), breaker(fallback_name(i)), settings.retries, engine(url))
                 for i, url in enumerate(settings.fallback_upstreams, start=1)]
    # a failing canary goes straight on to the primary: no retries on it
    canary = None if settings.canary_upstream is None else \
        Upstream(CANARY, breaker(CANARY), 0, engine(settings.canary_upstream))
    named = [Upstream(name, breaker(name), settings.retries, engine(spec.url, spec.api_key))
             for name, spec in settings.upstreams.items()]
    pool = UpstreamPool(primary, fallbacks, canary, settings.canary_weight, named)
    check_routes(settings, pool.names)
    policy = ResiliencePolicy(retries=settings.retries, backoff_s=settings.retry_backoff_s,
                              max_wait_s=settings.retry_max_wait_s,
                              first_token_timeout_s=settings.first_token_timeout_s,
                              total_timeout_s=settings.total_timeout_s)
    return ResilienceStage(pool, policy)


def check_routes(settings: "Settings", known: list[str]) -> None:
    """Every upstream a route names must exist: a typo is a start-up error, not a request-time surprise."""
    from unimodel.config import ConfigError

    for route in getattr(settings, "route_policies", {}).values():
        missing = [u for u in getattr(route, "upstreams", None) or [] if u not in known]
        if missing:
            raise ConfigError(f"the route '{route.name}' names the upstream '{missing[0]}', which is not "
                              f"configured (known: {', '.join(known)}; fallback-N come from --fallback-upstream, "
                              "canary from --canary-upstream, others from the config file's upstreams:)")
