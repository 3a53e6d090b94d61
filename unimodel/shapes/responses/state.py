"""The Responses API's state, built once: where stored responses live and the key that seals reasoning.

:class:`ResponsesOptions` is this package's small settings type (``compose.py`` fills it from the settings, as
every package below the server gets its own); :func:`build_state` makes the :class:`ResponsesState` the shape
reads (``state.store``: ``None`` when storing is off; ``state.sealer``; ``state.background``, the background runs
of this process), and the app starts it in its lifespan beside the request log and closes it first on shutdown
(the background runs are stopped, and their end stored, while the engines and the store still work). Nothing
connects before ``start``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from unimodel.shapes.responses.background import DEFAULT_MAX_IN_FLIGHT, BackgroundRuns
from unimodel.shapes.responses.sealing import DEFAULT_MAX_BYTES as SEAL_MAX_BYTES
from unimodel.shapes.responses.sealing import ReasoningSealer
from unimodel.shapes.responses.store import DAY_S, DEFAULT_MAX_BYTES, MemoryResponseStore, ResponseStore

StoreKind = Literal["log-db", "memory", "redis", "off"]


@dataclass(frozen=True)
class ResponsesOptions:
    store: StoreKind = "log-db"
    db_url: Optional[str] = None  # a SQLAlchemy URL (the request log's database); with store "log-db"
    redis_url: Optional[str] = None  # with store "redis"
    redis_prefix: str = "unimodel:"
    retention_days: float = 30.0
    max_bytes: int = DEFAULT_MAX_BYTES  # the largest record (response and conversation), in bytes of JSON
    memory_records: int = 10_000
    memory_bytes: int = 256 * 1024 * 1024
    key_secrets: tuple[str, ...] = field(default=(), repr=False)  # the sealing keys, current first
    seal_max_bytes: int = SEAL_MAX_BYTES
    max_background: int = DEFAULT_MAX_IN_FLIGHT  # background responses run at once by this process


@dataclass(eq=False)
class ResponsesState:
    """What the Responses shape keeps between requests."""

    options: ResponsesOptions
    store: Optional[ResponseStore]
    sealer: ReasoningSealer
    background: BackgroundRuns = field(default_factory=BackgroundRuns)

    async def start(self) -> None:
        if self.store is not None:
            await self.store.start()

    async def aclose(self) -> None:
        try:
            await self.background.aclose()  # each run stores its end, so the store closes after them
        finally:
            if self.store is not None:
                await self.store.aclose()


def build_store(options: ResponsesOptions) -> Optional[ResponseStore]:
    """The store ``options.store`` names (``None`` for "off"); raises ``ValueError`` for what is missing (a
    database URL, a Redis URL) and the request log's ``LogStoreError`` for a URL it cannot use."""
    retention_s, max_bytes = options.retention_days * DAY_S, options.max_bytes
    if options.store == "off":
        return None
    if options.store == "memory":
        return MemoryResponseStore(max_records=options.memory_records, max_total_bytes=options.memory_bytes,
                                   retention_s=retention_s, max_bytes=max_bytes)
    if options.store == "redis":
        if not options.redis_url:
            raise ValueError("--responses-store redis needs --redis redis://host:6379/0")
        from unimodel.shapes.responses.store_redis import RedisResponseStore

        return RedisResponseStore(options.redis_url, options.redis_prefix, retention_s=retention_s,
                                  max_bytes=max_bytes)
    if not options.db_url:
        raise ValueError("--responses-store log-db needs the request log's database URL")
    from unimodel.shapes.responses.store_sql import SqlResponseStore

    return SqlResponseStore(options.db_url, retention_s=retention_s, max_bytes=max_bytes)


def build_state(options: ResponsesOptions) -> ResponsesState:
    return ResponsesState(options, build_store(options),
                          ReasoningSealer(options.key_secrets, max_bytes=options.seal_max_bytes),
                          BackgroundRuns(options.max_background))
