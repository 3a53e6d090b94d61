"""The upstream pool: many replicas of one model behind one engine, each request sent to the best of them.

The pool is an :class:`~unimodel.engines.base.Engine` like any other (the resilience stage above it sees one
upstream, ``primary``). Inside, it keeps one :class:`~unimodel.engines.upstream.UpstreamEngine` per replica, all
on one aiohttp session (``--upstream-max-connections`` bounds them together), and three loops:

- **discovery** (:mod:`.discovery`): static URLs once; DNS names and Kubernetes services again every
  ``discovery_interval_s``. A replica that appears is started (probed) and scraped at once; one that is no
  longer listed takes no new requests and is closed when its last request ends. A lookup that fails keeps the
  list it had.
- **metrics**: every replica's ``/metrics`` every ``scrape_interval_s`` (:mod:`.replica`, :mod:`.load`).
- **admission** (:mod:`.admission`): when every usable replica is saturated, a request waits at the gateway,
  admitted by priority class and then fairly between tenants each time room appears (a request of ours ends, a
  new read of the metrics, a replica comes back).

A request is sent to the replica :mod:`.choose` picks. Until its first event, a failure of that replica (it
refused the connection, answered 5xx or 429, timed out) is counted by the replica's own circuit breaker and the
request tries the next best replica, ``tries`` replicas at most; a failure that is the request's own (a 4xx) is
its answer. After the first event nothing is retried: a replica that dies mid-stream fails only the streams it
was serving, and its breaker hears of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Optional

import aiohttp
import yarl

from unimodel.engines.base import Engine, GenerationRequest, PromptCount
from unimodel.engines.breaker import CircuitBreaker, Permit
from unimodel.engines.options import PoolOptions
from unimodel.engines.pool.admission import AdmissionQueue
from unimodel.engines.pool.choose import RoundRobin, choose_balanced
from unimodel.engines.pool.discovery import Discovery, DiscoveryError
from unimodel.engines.pool.prefix import AffinityTable, PrefixIndex, prompt_blocks
from unimodel.engines.pool.replica import Replica, Saturation
from unimodel.engines.upstream import UpstreamEngine
from unimodel.engines.verdicts import Verdict, classify
from unimodel.errors import ServiceUnavailableError, UnimodelError
from unimodel.protocol.events import Event, close_events
from unimodel.protocol.openai import ModelCard

log = logging.getLogger("unimodel.pool")

MakeReplica = Callable[[str, aiohttp.ClientSession], UpstreamEngine]
MakeBreaker = Callable[[str, Callable[[], Awaitable[bool]]], CircuitBreaker]


class PoolEngine(Engine):
    kind = "pool"

    def __init__(self, discoveries: Sequence[Discovery], options: PoolOptions, *, make_replica: MakeReplica,
                 make_breaker: MakeBreaker, new_session: Callable[[], aiohttp.ClientSession],
                 served_model_name: Optional[str] = None, rng: Optional[random.Random] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not discoveries:
            raise ValueError("a pool needs at least one upstream")
        self.options = options
        self.limits = Saturation(options.max_waiting, options.max_kv_usage, options.max_inflight,
                                 stale_s=2.0 * options.scrape_interval_s)
        self._discoveries = list(discoveries)
        self._listed: list[set[str]] = [set() for _ in self._discoveries]  # each discovery's last good answer
        self._make_replica = make_replica
        self._make_breaker = make_breaker
        self._new_session = new_session
        self._served = served_model_name
        self._rng = rng or random.Random()
        self._clock = clock
        self._session: Optional[aiohttp.ClientSession] = None
        self.replicas: dict[str, Replica] = {}  # by URL
        self._names: dict[str, str] = {}  # name → URL
        self._queue = AdmissionQueue(options.queue_size, options.queue_timeout_s)
        self._sessions = AffinityTable(options.sessions)
        self._round_robin = RoundRobin()
        self._tasks: list[asyncio.Task[None]] = []
        self.choices: dict[str, int] = {"prefix": 0, "session": 0, "load": 0, "only": 0, "round_robin": 0,
                                        "queued": 0, "failover": 0}

    # ---- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = self._new_session()
        await self._discover()
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
        self._names.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def is_ready(self) -> bool:
        return any(r.usable() for r in self.replicas.values())

    async def check_health(self) -> bool:
        live = [r for r in self.replicas.values() if r.state == "active"]
        if not live:
            return False
        answers = await asyncio.gather(*(r.engine.check_health() for r in live), return_exceptions=True)
        return any(a is True for a in answers)

    def models(self) -> list[ModelCard]:
        for replica in self.replicas.values():
            if replica.usable():
                models = replica.engine.models()
                if models:
                    return models
        return [ModelCard(id=self._served)] if self._served else []

    # ---- discovery -------------------------------------------------------------------------------------

    async def _discover(self) -> None:
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
        self._pump()

    def _add(self, url: str) -> None:
        assert self._session is not None
        engine = self._make_replica(url, self._session)
        name = _replica_name(url, self._names)
        replica = Replica(name, url, engine, self._make_breaker(name, engine.check_health),
                          PrefixIndex(self.options.prefix_cache_blocks))
        self.replicas[url] = replica
        self._names[name] = url
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
        self._pump()

    async def _remove(self, replica: Replica) -> None:
        self.replicas.pop(replica.url, None)
        self._names.pop(replica.name, None)
        self._sessions.forget(replica.name)
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
                await self._discover()
            except asyncio.CancelledError:
                raise
            except Exception:  # never a dead loop: the pool would freeze on the list it had
                log.exception("the pool's discovery loop failed; it goes on")

    # ---- metrics ---------------------------------------------------------------------------------------

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
                self._pump()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the pool's metrics loop failed; it goes on")
            await asyncio.sleep(max(0.0, interval - (self._clock() - began)))

    # ---- choosing --------------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Admit the next waiter when some replica has room (one at a time: the admitted one's dispatch, or a
        request's end, pumps again)."""
        if len(self._queue) and self._has_room():
            self._queue.admit_next()

    def _has_room(self) -> bool:
        now = self._clock()
        return any(r.usable() and not r.saturated(now, self.limits) for r in self.replicas.values())

    async def _pick(self, request: GenerationRequest, blocks: list[int],
                    tried: set[Replica]) -> tuple[Replica, Permit]:
        """A replica and its breaker's permit for this request; waits in the admission queue when every replica
        is saturated (balanced policy only)."""
        admitted = False
        while True:
            candidates = [r for r in self.replicas.values() if r not in tried and r.usable()]
            if not candidates:
                raise ServiceUnavailableError(
                    "no replica of the upstream pool is ready" + (" (every one tried failed)" if tried else ""),
                    retry_after=2)
            if self.options.policy == "round-robin":
                replica, reason = self._round_robin.choose(candidates), "round_robin"
            else:
                now = self._clock()
                room = [r for r in candidates if not r.saturated(now, self.limits)]
                if not admitted and (not room or len(self._queue)):
                    self.choices["queued"] += 1
                    try:
                        await self._queue.wait(request.priority_rank, request.tenant)
                    except BaseException:
                        self._pump()  # an admission it may have been given goes to the next waiter
                        raise
                    admitted = True
                    continue
                replica, reason = self._balanced(request, blocks, room or candidates)
            permit = replica.breaker.allow()
            if permit is None:  # half-open with its probe out, or opened just now: not this one
                tried = tried | {replica}
                continue
            self.choices[reason] += 1
            return replica, permit

    def _balanced(self, request: GenerationRequest, blocks: list[int],
                  candidates: list[Replica]) -> tuple[Replica, str]:
        if len(candidates) == 1:
            return candidates[0], "only"
        url = self._names.get(self._sessions.get(request.affinity) or "")
        session = self.replicas.get(url) if url is not None else None
        replica = choose_balanced(candidates, blocks, session, self.options.max_waiting, self._rng)
        if replica is session:
            return replica, "session"
        return replica, "prefix" if blocks and replica.prefix.match(blocks) else "load"

    def _sent(self, replica: Replica, request: GenerationRequest, blocks: list[int]) -> None:
        replica.sent()
        if blocks:
            replica.prefix.add(blocks)
        self._sessions.put(request.completion_id, replica.name)
        if request.affinity is not None:
            self._sessions.put(request.affinity, replica.name)

    def _ended(self, replica: Replica) -> None:
        replica.ended()
        if not replica.listed and replica.inflight == 0 and not replica.closed:
            asyncio.get_running_loop().create_task(self._remove(replica))
        self._pump()

    # ---- generation ------------------------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        balanced = self.options.policy == "balanced"
        blocks = (prompt_blocks(request, self.options.prefix_block_bytes, self.options.prefix_max_blocks)
                  if balanced else [])
        caller = request.tenant or "anonymous"
        tried: set[Replica] = set()
        last: Optional[BaseException] = None
        for attempt in range(max(1, self.options.tries)):
            try:
                replica, permit = await self._pick(request, blocks, tried)
            except ServiceUnavailableError:
                if last is not None:
                    raise last from None
                raise
            if attempt:
                self.choices["failover"] += 1
            self._sent(replica, request, blocks)
            events = replica.engine.generate(request)
            try:
                first = await anext(events)  # type: ignore[arg-type]
            except StopAsyncIteration:
                replica.breaker.success(permit)
                self._ended(replica)
                return
            except BaseException as exc:
                self._ended(replica)
                with contextlib.suppress(Exception):
                    await close_events(events)
                if not isinstance(exc, Exception):  # the client left: no verdict on the replica
                    replica.breaker.release(permit)
                    raise
                verdict = classify(exc)
                if verdict is Verdict.CLIENT:
                    replica.breaker.success(permit)
                    raise
                if verdict.counts_as_failure:
                    replica.breaker.failure(permit, caller)
                else:
                    replica.breaker.release(permit)
                if not isinstance(exc, UnimodelError):
                    log.error("replica %s failed unexpectedly", replica.name, exc_info=exc)
                log.info("request %s: replica %s failed before its first token (%s)%s", request.completion_id,
                         replica.name, _describe(exc), ", trying another" if attempt + 1 < self.options.tries
                         else "")
                tried.add(replica)
                last = exc
                continue
            replica.breaker.success(permit)
            self._pump()  # room may remain for the next waiter
            try:
                yield first
                async for event in events:  # type: ignore[attr-defined]
                    yield event
            except Exception as exc:
                if classify(exc).counts_as_failure:  # the replica broke mid-stream: this stream fails, once
                    replica.breaker.failure(Permit(False), caller)
                raise
            finally:
                self._ended(replica)
                await close_events(events)
            return
        assert last is not None
        raise last

    # ---- tokens ----------------------------------------------------------------------------------------

    def _any(self) -> Engine:
        usable = [r for r in self.replicas.values() if r.usable()]
        if not usable:
            raise ServiceUnavailableError("no replica of the upstream pool is ready", retry_after=2)
        return min(usable, key=lambda r: r.busy()).engine

    async def count_prompt(self, request: GenerationRequest, *, token_strs: bool = False) -> Optional[PromptCount]:
        return await self._any().count_prompt(request, token_strs=token_strs)

    async def detokenize(self, model: str, tokens: list[int]) -> Optional[str]:
        return await self._any().detokenize(model, tokens)

    # ---- operators -------------------------------------------------------------------------------------

    def replica(self, name: str) -> Replica:
        """The replica called ``name``; :class:`KeyError` when the pool has none."""
        return self.replicas[self._names[name]]

    def drain(self, name: str, drained: bool = True) -> Replica:
        """Stop (or resume) sending new requests to ``name``; the ones in flight finish."""
        replica = self.replica(name)
        if replica.drained != drained:
            replica.drained = drained
            log.warning("replica %s %s (%d requests in flight)", name, "drained" if drained else "back in service",
                        replica.inflight)
        self._pump()
        return replica

    def saturation(self) -> float:
        """The pool's saturation for an autoscaler: the mean of its active ready replicas' (each 0 to 1, 1 when
        its metrics are stale), plus the gateway's own queue against their room; 1 and the queue without any."""
        now = self._clock()
        live = [r for r in self.replicas.values() if r.state == "active" and r.engine.is_ready()]
        queued = len(self._queue)
        if not live:
            return 1.0 + queued / max(1, self.options.max_waiting)
        mean = sum(min(2.0, r.saturation(now, self.limits)) for r in live) / len(live)
        return mean + queued / (self.options.max_waiting * len(live))

    def pool_status(self) -> Optional[dict[str, Any]]:
        now = self._clock()
        queue = self._queue
        return {
            "policy": self.options.policy, "saturation": round(self.saturation(), 3),
            "replicas": {r.name: r.status(now, self.limits) for r in self.replicas.values()},
            "queue": {"waiting": len(queue), "admitted": queue.admitted, "timed_out": queue.timed_out,
                      "refused": queue.refused},
            "choices": dict(self.choices),
        }


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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, UnimodelError):
        return f"{exc.status_code} {exc.code}"
    return type(exc).__name__
