"""The upstream pool: many replicas of one model behind one engine, each request sent to the best of them.

The pool is an :class:`~unimodel.engines.base.Engine` like any other (the resilience stage above it sees one
upstream, ``primary``). Inside, its members (:mod:`.members`) are one :class:`~unimodel.engines.upstream.UpstreamEngine`
per replica, all on one aiohttp session (``--upstream-max-connections`` bounds them together), found by
discovery (:mod:`.discovery`) and read every ``scrape_interval_s`` (:mod:`.replica`, :mod:`.load`). When every
usable replica is saturated, a request waits at the gateway (:mod:`.admission`), admitted by priority class and
then fairly between tenants each time room appears (a request of ours ends, a new read of the metrics, a
replica comes back).

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
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Optional

import aiohttp

from unimodel.engines.base import Engine, GenerationRequest, PromptCount
from unimodel.engines.breaker import Permit
from unimodel.engines.options import PoolOptions
from unimodel.engines.pool.admission import AdmissionQueue
from unimodel.engines.pool.choose import RoundRobin, choose_balanced
from unimodel.engines.pool.discovery import Discovery
from unimodel.engines.pool.members import MakeBreaker, MakeReplica, Members
from unimodel.engines.pool.prefix import AffinityTable, prompt_blocks
from unimodel.engines.pool.replica import Replica, Saturation
from unimodel.engines.verdicts import Verdict, classify, judged
from unimodel.errors import ServiceUnavailableError, UnimodelError
from unimodel.protocol.events import Event, close_events
from unimodel.protocol.openai import ModelCard

log = logging.getLogger("unimodel.pool")

class PoolEngine(Engine):
    kind = "pool"

    def __init__(self, discoveries: Sequence[Discovery], options: PoolOptions, *, make_replica: MakeReplica,
                 make_breaker: MakeBreaker, new_session: Callable[[], aiohttp.ClientSession],
                 served_model_name: Optional[str] = None, rng: Optional[random.Random] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options
        self.limits = Saturation(options.max_waiting, options.max_kv_usage, options.max_inflight,
                                 stale_s=2.0 * options.scrape_interval_s)
        self._served = served_model_name
        self._rng = rng or random.Random()
        self._clock = clock
        self._queue = AdmissionQueue(options.queue_size, options.queue_timeout_s)
        self._sessions = AffinityTable(options.sessions)
        self._round_robin = RoundRobin()
        self.members = Members(discoveries, options, make_replica=make_replica, make_breaker=make_breaker,
                               new_session=new_session, clock=clock, changed=self._pump,
                               left=self._sessions.forget)
        self.replicas = self.members.replicas  # by URL (the same dict: members adds and removes)
        self._names = self.members.names
        self.choices: dict[str, int] = {"prefix": 0, "session": 0, "load": 0, "only": 0, "round_robin": 0,
                                        "queued": 0, "failover": 0}

    # ---- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.members.start()

    async def aclose(self) -> None:
        await self.members.aclose()

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
            self.members.remove_soon(replica)
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
                if judged(replica.breaker, permit, exc, caller) is Verdict.CLIENT:  # its answer, no other's
                    raise
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



def _describe(exc: BaseException) -> str:
    if isinstance(exc, UnimodelError):
        return f"{exc.status_code} {exc.code}"
    return type(exc).__name__
