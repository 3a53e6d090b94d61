"""The upstreams a request may go to, each with its own circuit breaker, and the order they are tried in.

Names: ``primary`` is the server's own engine (whatever ``--engine`` is: a local model may fail over to a
remote one); ``fallback-1``, ``fallback-2`` … are ``--fallback-upstream`` URLs in order; ``canary`` is
``--canary-upstream``; any other name is an entry of the config file's ``upstreams:`` mapping, reachable when a
route names it. Every upstream but the primary is an engine of the server's engine set (an upstream engine with
the primary's settings), given to the stage by the composition root and started and closed by the app.

The chain: a route that names upstreams gets exactly those, in order; otherwise ``primary`` then the
fallbacks — or, for a ``canary_weight`` share of requests, ``canary`` first and then that chain.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from unimodel.engines.base import Engine
from unimodel.engines.breaker import CircuitBreaker

log = logging.getLogger("unimodel.resilience")

PRIMARY = "primary"
CANARY = "canary"


def fallback_name(i: int) -> str:
    return f"fallback-{i}"


@dataclass(eq=False)
class Upstream:
    """One place a request can be sent. ``engine`` is ``None`` for the primary (the ``generate`` handed to the
    stage's ``wrap``); ``retries`` is how often a retryable failure is tried again here."""

    name: str
    breaker: CircuitBreaker
    retries: int
    engine: Optional[Engine] = None

    def status(self) -> dict[str, Any]:
        out = self.breaker.snapshot()
        if self.engine is not None:
            out["ready"] = self.engine.is_ready()
        return out


class UpstreamPool:
    """Every upstream by name, the default chain, and the canary split."""

    def __init__(self, primary: Upstream, fallbacks: Sequence[Upstream] = (), canary: Optional[Upstream] = None,
                 canary_weight: float = 0.0, named: Sequence[Upstream] = (),
                 rng: Optional[random.Random] = None) -> None:
        if not 0.0 <= canary_weight <= 1.0:
            raise ValueError("the canary weight is a share of requests, between 0 and 1")
        self.primary = primary
        self.canary = canary
        self.canary_weight = canary_weight if canary is not None else 0.0
        self.by_name: dict[str, Upstream] = {}
        for u in (primary, *fallbacks, *([canary] if canary else []), *named):
            if u.name in self.by_name:
                raise ValueError(f"two upstreams are named '{u.name}'")
            self.by_name[u.name] = u
        self.default_chain: tuple[Upstream, ...] = (primary, *fallbacks)
        self.canary_chain: tuple[Upstream, ...] = (canary, *self.default_chain) if canary else self.default_chain
        self._rng = rng or random.Random()
        self._unknown_logged: set[str] = set()

    @property
    def names(self) -> list[str]:
        return list(self.by_name)

    def chain(self, names: Optional[Sequence[str]] = None) -> tuple[Upstream, ...]:
        """The upstreams to try, in order: a route's own list, else the default chain (canary first for a
        ``canary_weight`` share of requests). Names nobody configured are skipped (logged once each)."""
        if names:
            chosen = []
            for name in names:
                upstream = self.by_name.get(name)
                if upstream is not None:
                    chosen.append(upstream)
                elif name not in self._unknown_logged:
                    self._unknown_logged.add(name)
                    log.error("a route names upstream '%s', which is not configured (known: %s); skipped",
                              name, ", ".join(self.by_name))
            return tuple(chosen)
        if self.canary_weight > 0.0 and self._rng.random() < self.canary_weight:
            return self.canary_chain
        return self.default_chain

    def status(self) -> dict[str, Any]:
        return {name: u.status() for name, u in self.by_name.items()}
