"""The engines one server runs: its primary engine and the extra upstreams (fallbacks, canary, named ones).

The app starts and closes the whole set with its lifespan; the resilience stage only chooses among the
engines it is given. The primary may take minutes to start (a model loading, vLLM launching), so the app
starts it in the background (``/ready`` says 503 meanwhile); the extras are upstream clients whose start
probes their server, bounded by its connect timeout, so they start together, before the server listens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from types import MappingProxyType

from unimodel.engines.base import Engine

log = logging.getLogger("unimodel.engines")


class EngineSet:
    """``primary``, and ``extras`` by the name a route or the resilience stage knows them by."""

    def __init__(self, primary: Engine, extras: Mapping[str, Engine] | None = None) -> None:
        self.primary = primary
        self.extras: Mapping[str, Engine] = MappingProxyType(dict(extras or {}))

    def __iter__(self) -> Iterator[Engine]:
        yield self.primary
        yield from self.extras.values()

    async def start_extras(self) -> None:
        """Start every extra engine, concurrently; the first failure is raised (a start-up error)."""
        await asyncio.gather(*(engine.start() for engine in self.extras.values()))

    async def aclose(self) -> None:
        """Close every engine, the primary first; one failing is logged and does not stop the others."""
        for name, engine in (("primary", self.primary), *self.extras.items()):
            try:
                await engine.aclose()
            except Exception:
                log.exception("closing the %s engine failed", name)
