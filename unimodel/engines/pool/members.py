"""The pool's members: the replicas discovery lists, each started, read and closed in its turn.

:class:`Members` holds the replicas by URL (and by name), runs the discovery loop (static URLs once; DNS names
and Kubernetes services again every ``discovery_interval_s``) and the metrics loop (every replica's ``/metrics``
every ``scrape_interval_s``). A replica that appears is started (its upstream client probes it) and read at
once; one no longer listed takes no new requests and is closed when its last request ends; a lookup that fails
keeps the list it had. It tells the engine when something changed that may make room (``changed``: the
engine's admission queue pumps) and when a replica left (``left``: its sessions are forgotten).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Optional

import aiohttp
import yarl

from unimodel.engines.breaker import CircuitBreaker
from unimodel.engines.options import PoolOptions
from unimodel.engines.pool.discovery import Discovery, DiscoveryError
from unimodel.engines.pool.prefix import PrefixIndex
from unimodel.engines.pool.replica import Replica
from unimodel.engines.upstream import UpstreamEngine

log = logging.getLogger("unimodel.pool")

MakeReplica = Callable[[str, aiohttp.ClientSession], UpstreamEngine]
MakeBreaker = Callable[[str, Callable[[], Awaitable[bool]]], CircuitBreaker]


class Members:
    def __init__(self, discoveries: Sequence[Discovery], options: PoolOptions, *, make_replica: MakeReplica,
                 make_breaker: MakeBreaker, new_session: Callable[[], aiohttp.ClientSession],
                 clock: Callable[[], float], changed: Callable[[], None], left: Callable[[str], None]) -> None:
        if not discoveries:
            raise ValueError("a pool needs at least one upstream")
        self.options = options
        self._discoveries = list(discoveries)
        self._listed: list[set[str]] = [set() for _ in self._discoveries]  # each discovery's last good answer
        self._make_replica = make_replica
        self._make_breaker = make_breaker
        self._new_session = new_session
        self._clock = clock
        self._changed = changed
        self._left = left
        self._session: Optional[aiohttp.ClientSession] = None
        self.replicas: dict[str, Replica] = {}  # by URL
        self.names: dict[str, str] = {}  # name → URL
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._session = self._new_session()
        await self.discover()
        if not self.replicas:
            log.warning("the upstream pool starts with no replica (discovery found none yet); /ready says 503 "
                        "until one appears")
        self._tasks.append(asyncio.create_task(self._scrape_loop(), name="pool-metrics"))
        if any(d.dynamic for d in self._discoveries):
            self._tasks.append(asyncio.create_task(self._discovery_loop(), name="pool-discovery"))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for replica in list(self.replicas.values()):
            await self._close_replica(replica)
        self.replicas.clear()
        self.names.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def remove_soon(self, replica: Replica) -> None:
        """A replica discovery no longer lists ended its last request: close it (in its own task)."""
        asyncio.get_running_loop().create_task(self._remove(replica))

    async def discover(self) -> None:
        assert self._session is not None
        for i, discovery in enumerate(self._discoveries):
            if self._listed[i] and not discovery.dynamic:
                continue  # a static URL is looked up once
            try:
                self._listed[i] = set(await discovery.resolve(self._session))
            except DiscoveryError as exc:
                log.warning("looking up the replicas of %s failed (%s); keeping the %d it listed before",
                            discovery.spec, exc, len(self._listed[i]))
        wanted = set().union(*self._listed)
        for url in sorted(wanted - self.replicas.keys()):
            self._add(url)
        for url, replica in list(self.replicas.items()):
            listed = url in wanted
            if listed != replica.listed:
                replica.listed = listed
                log.info("replica %s %s the pool", replica.name, "is back in" if listed else "left")
            if not listed and replica.inflight == 0:
                await self._remove(replica)
        self._changed()

    def _add(self, url: str) -> None:
        assert self._session is not None
        engine = self._make_replica(url, self._session)
        name = _replica_name(url, self.names)
        replica = Replica(name, url, engine, self._make_breaker(name, engine.check_health),
                          PrefixIndex(self.options.prefix_cache_blocks))
        self.replicas[url] = replica
        self.names[name] = url
        replica.started = asyncio.create_task(self._start_replica(replica), name=f"pool-start-{name}")
        log.info("replica %s joined the pool", name)

    async def _start_replica(self, replica: Replica) -> None:
        try:
            await replica.engine.start()  # probes it (bounded by the connect timeout), then keeps probing
            await replica.scrape(self._session_now(), self._scrape_timeout(), self._clock)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("starting replica %s failed", replica.name)
        self._changed()

    async def _remove(self, replica: Replica) -> None:
        self.replicas.pop(replica.url, None)
        self.names.pop(replica.name, None)
        self._left(replica.name)
        await self._close_replica(replica)

    async def _close_replica(self, replica: Replica) -> None:
        if replica.closed:
            return
        replica.closed = True
        if replica.started is not None and not replica.started.done():
            replica.started.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replica.started
        try:
            await replica.engine.aclose()
            await replica.breaker.aclose()
        except Exception:
            log.exception("closing replica %s failed", replica.name)

    async def _discovery_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.discovery_interval_s)
            try:
                await self.discover()
            except asyncio.CancelledError:
                raise
            except Exception:  # never a dead loop: the pool would freeze on the list it had
                log.exception("the pool's discovery loop failed; it goes on")

    def _session_now(self) -> aiohttp.ClientSession:
        assert self._session is not None, "the pool is not started"
        return self._session

    def _scrape_timeout(self) -> aiohttp.ClientTimeout:
        limit = max(0.25, 2.0 * self.options.scrape_interval_s)
        return aiohttp.ClientTimeout(total=limit, connect=min(limit, self.options.connect_timeout_s))

    async def _scrape_loop(self) -> None:
        interval = self.options.scrape_interval_s
        while True:
            began = self._clock()
            try:
                live = [r for r in self.replicas.values() if not r.closed]
                await asyncio.gather(*(r.scrape(self._session_now(), self._scrape_timeout(), self._clock)
                                       for r in live))
                self._changed()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the pool's metrics loop failed; it goes on")
            await asyncio.sleep(max(0.0, interval - (self._clock() - began)))

def _replica_name(url: str, taken: dict[str, str]) -> str:
    """host:port, plus the path when it is not ``/v1``; a suffix when two replicas would share one."""
    parsed = yarl.URL(url)
    host = parsed.host or "?"
    if ":" in host:
        host = f"[{host}]"
    name = f"{host}:{parsed.port}" if parsed.port else host
    path = parsed.path.rstrip("/")
    if path and path != "/v1":
        name += path
    base, n = name, 2
    while name in taken:
        name, n = f"{base}#{n}", n + 1
    return name
