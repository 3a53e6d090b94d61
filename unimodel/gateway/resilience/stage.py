"""The resilience stage: the last wrapper around the engine call — timeouts, retries, breakers, fallback, canary.

Until an upstream's first event, a request may be retried (retryable failures only, with backoff and full
jitter, every wait bounded) and then sent to the next upstream of its chain (:mod:`.upstreams`); upstreams
whose circuit is open are skipped, and when every one is, the answer is a fast 503 ``circuit_open`` with
``Retry-After``. From the first event on, nothing is retried: that event is on its way to the client, and a
failure later ends the stream with an error frame as any mid-stream failure does.

Timeouts, each from the route's policy when it sets one (``call.route``), else the server's:
``connect`` (the upstream client's connect timeout, for this request), ``first_token`` (per try: no first
event in time → that upstream failed, 504 ``upstream_timeout`` if it was the last) and ``total`` (the whole
request, waits and stream included; past it, 504 before the first event or an error frame after; the deadline is
also left on the call, ``REQUEST_DEADLINE``, so that the server's writes to a client that stopped reading end
there too).

The choice is recorded: ``ctx.upstream`` (``primary``, ``canary``, ``fallback-1`` …),
``ctx.retries`` (tries after the first) and the ``X-Unimodel-Upstream`` response header. With
nothing to do (no extra upstream, no retries, no timeouts, no breaker) ``wrap`` returns the engine call as is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Optional

from unimodel.engines.base import GenerationRequest
from unimodel.errors import CircuitOpenError, UnimodelError, UpstreamTimeoutError
from unimodel.engines.breaker import NO_PROBE, Permit
from unimodel.gateway.resilience.deadline import (
    PRECISE_DEADLINES,
    REQUEST_DEADLINE,
    DeadlinePassed,
    RequestDeadline,
    StreamDeadline,
    next_before,
)
from unimodel.engines.verdicts import Backoff, Verdict, classify, judged
from unimodel.gateway.resilience.upstreams import Upstream, UpstreamPool
from unimodel.protocol.events import Event, close_events
from unimodel.service.context import RouteChoice
from unimodel.service.pipeline import Call, Generate, Stage

log = logging.getLogger("unimodel.resilience")

UPSTREAM_HEADER = "X-Unimodel-Upstream"


@dataclass(frozen=True)
class ResiliencePolicy:
    """The server's defaults (a route may override the timeouts). ``None`` timeouts: no limit of ours."""

    retries: int = 2
    backoff_s: float = 0.2
    max_wait_s: float = 5.0  # the longest single wait: backoff cap, and the longest Retry-After honoured
    first_token_timeout_s: Optional[float] = None
    total_timeout_s: Optional[float] = None


@dataclass(frozen=True, slots=True)
class _Timeouts:
    connect_s: Optional[float]
    first_token_s: Optional[float]
    total_s: Optional[float]


class _Opened:
    """An upstream that answered: its stream (first event already taken) and who it is."""

    __slots__ = ("upstream", "events", "first")

    def __init__(self, upstream: Upstream, events: AsyncIterator[Event], first: Event) -> None:
        self.upstream, self.events, self.first = upstream, events, first


class ResilienceStage(Stage):
    name = "resilience"

    def __init__(self, pool: UpstreamPool, policy: ResiliencePolicy = ResiliencePolicy(), *,
                 backoff: Optional[Backoff] = None,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        if policy.retries < 0:
            raise ValueError("retries must be ≥ 0")
        self.pool = pool
        self.policy = policy
        self._backoff = backoff or Backoff(policy.backoff_s, policy.max_wait_s)
        self._sleep = sleep
        self._defaults = _Timeouts(None, policy.first_token_timeout_s, policy.total_timeout_s)
        self._idle = (len(pool.by_name) == 1 and not any(u.retries for u in pool.default_chain)
                      and policy.first_token_timeout_s is None and policy.total_timeout_s is None
                      and not pool.primary.breaker.enabled)

    def status(self) -> dict[str, Any]:
        return {"upstreams": self.pool.status(), "retries": self.policy.retries}

    async def aclose(self) -> None:
        for upstream in self.pool.by_name.values():  # a breaker's health check in flight
            await upstream.breaker.aclose()

    @property
    def upstream_names(self) -> list[str]:
        """Every upstream a route may name."""
        return self.pool.names

    # ---- per request -----------------------------------------------------------------------------------

    def wrap(self, call: Call, generate: Generate) -> Generate:
        route = call.route
        timeouts = self._timeouts(route)
        names = route.upstreams if route is not None else None
        if self._idle and timeouts == self._defaults and not names:
            return generate
        return functools.partial(self._generate, call, generate, timeouts, names)

    def _timeouts(self, route: Optional[RouteChoice]) -> _Timeouts:
        if route is None:
            return self._defaults
        first, total = route.first_token_timeout_s, route.total_timeout_s
        return _Timeouts(route.connect_timeout_s,
                         first if first is not None else self._defaults.first_token_s,
                         total if total is not None else self._defaults.total_s)

    async def _generate(self, call: Call, primary: Generate, timeouts: _Timeouts, names: Optional[tuple[str, ...]],
                        request: GenerationRequest) -> AsyncIterator[Event]:
        loop = asyncio.get_running_loop()
        deadline = None if timeouts.total_s is None else loop.time() + timeouts.total_s
        if deadline is not None:  # the server's writes to the client are bounded by it too
            call.put(REQUEST_DEADLINE, RequestDeadline(
                deadline, functools.partial(_total_timeout, timeouts.total_s, started=True)))
        opened = await self._first(call, primary, self.pool.chain(names), request, timeouts, deadline)
        if opened is None:
            return
        breaker = opened.upstream.breaker
        bound = None if deadline is None or not PRECISE_DEADLINES else StreamDeadline(deadline)
        async with aclosing(opened.events) as events:  # type: ignore[type-var]
            yield opened.first
            try:
                if deadline is None:
                    async for event in events:
                        yield event
                    return
                while True:
                    try:
                        if bound is None:  # Python 3.10: a timer per event
                            event = await next_before(events, deadline)
                        else:
                            bound.check()
                            bound.waiting = asyncio.current_task(loop)  # given the loop: 4x faster
                            try:
                                event = await events.__anext__()
                            except asyncio.CancelledError:
                                if bound.cancelled_us():
                                    raise DeadlinePassed() from None
                                raise
                            finally:
                                bound.waiting = None
                    except StopAsyncIteration:
                        return
                    except DeadlinePassed:
                        raise _total_timeout(timeouts.total_s, started=True) from None
                    yield event
            except Exception as exc:
                # the stream broke after its first event: not retried (that event is with the client), but the
                # upstream's failure counts; our own total timeout is no failure of the upstream's
                if not _is_total_timeout(exc) and classify(exc).counts_as_failure:
                    breaker.failure(NO_PROBE, _caller(call))
                raise
            finally:
                if bound is not None:
                    bound.close()

    async def _first(self, call: Call, primary: Generate, chain: tuple[Upstream, ...], request: GenerationRequest,
                     timeouts: _Timeouts, deadline: Optional[float]) -> Optional[_Opened]:
        """Try the chain until an upstream yields its first event; raise the last failure if none does."""
        loop = asyncio.get_running_loop()
        attempts = 0
        last: Optional[BaseException] = None
        blocked: list[Upstream] = []
        current: Optional[Upstream] = None
        try:
            for upstream in chain:
                for try_no in range(upstream.retries + 1):
                    permit = upstream.breaker.allow()
                    if permit is None:
                        if try_no == 0:
                            blocked.append(upstream)
                        break
                    if deadline is not None and loop.time() >= deadline:
                        upstream.breaker.release(permit)
                        raise _total_timeout(timeouts.total_s, started=False) from last
                    attempts += 1
                    current = upstream
                    try:
                        opened = await self._try(upstream, permit, primary, request, timeouts, deadline,
                                                 _caller(call))
                    except _GiveUp as give_up:
                        last = give_up.error
                        if not give_up.retry or try_no >= upstream.retries:
                            break
                        wait = self._backoff.wait_for(last, try_no + 1)
                        if wait is None or (deadline is not None and loop.time() + wait >= deadline):
                            break  # its Retry-After is too long, or past our deadline: the next upstream
                        log.info("request %s: %s failed (%s), retrying in %.3f s", call.ctx.request_id,
                                 upstream.name, _describe(last), wait)
                        await self._sleep(wait)
                        continue
                    return opened
                if current is upstream and last is not None and upstream is not chain[-1]:
                    log.warning("request %s: upstream %s failed (%s), trying the next one", call.ctx.request_id,
                                upstream.name, _describe(last))
            if last is not None:
                raise last
            retry_after = min((u.breaker.retry_after() for u in blocked), default=1.0)
            raise CircuitOpenError("no upstream is available right now (their circuit breakers are open); "
                                   "retry later", retry_after=max(1.0, retry_after))
        finally:
            call.ctx.retries = max(0, attempts - 1)
            if current is not None:
                call.ctx.upstream = current.name
                call.response_headers[UPSTREAM_HEADER] = current.name

    async def _try(self, upstream: Upstream, permit: Permit, primary: Generate, request: GenerationRequest,
                   timeouts: _Timeouts, deadline: Optional[float], caller: str) -> Optional[_Opened]:
        """One try: its first event, or :class:`_GiveUp` with the verdict. The breaker hears the outcome (a
        failure with the caller's name: one caller's failures alone do not open it)."""
        loop = asyncio.get_running_loop()
        first_deadline = deadline
        if timeouts.first_token_s is not None:
            first_deadline = loop.time() + timeouts.first_token_s
            if deadline is not None:
                first_deadline = min(first_deadline, deadline)
        events: Optional[AsyncIterator[Event]] = None
        try:
            events = _open(upstream, primary, request, timeouts)
            try:
                first = await (anext(events) if first_deadline is None else next_before(events, first_deadline))
            except DeadlinePassed as exc:
                assert first_deadline is not None
                if deadline is not None and first_deadline >= deadline:
                    raise _total_timeout(timeouts.total_s, started=False) from exc
                raise UpstreamTimeoutError(f"no first token from the upstream within {timeouts.first_token_s:g} s") \
                    from exc
        except StopAsyncIteration:
            upstream.breaker.success(permit)
            return None
        except BaseException as exc:
            if events is not None:
                try:
                    await close_events(events)
                except Exception:
                    log.debug("closing a failed upstream stream failed", exc_info=True)
            if not isinstance(exc, Exception):  # cancelled or closed: the client left, no verdict
                upstream.breaker.release(permit)
                raise
            if _is_total_timeout(exc):  # out of time altogether: nothing left to try
                upstream.breaker.failure(permit, caller)
                raise
            verdict = judged(upstream.breaker, permit, exc, caller)
            if verdict is Verdict.CLIENT:  # the request's own fault: never retried; the upstream did answer
                raise
            if not isinstance(exc, UnimodelError):
                log.error("upstream %s failed unexpectedly", upstream.name, exc_info=exc)
            raise _GiveUp(exc, retry=verdict.may_retry) from exc
        upstream.breaker.success(permit)
        return _Opened(upstream, events, first)


class _GiveUp(Exception):
    """This try failed; ``retry``: the failure is worth another try on the same upstream."""

    def __init__(self, error: BaseException, retry: bool) -> None:
        super().__init__(str(error))
        self.error, self.retry = error, retry


def _open(upstream: Upstream, primary: Generate, request: GenerationRequest,
          timeouts: _Timeouts) -> AsyncIterator[Event]:
    generate: Generate = primary if upstream.engine is None else upstream.engine.generate
    if timeouts.connect_s is not None:  # engines that open connections honour it; the local engine has none
        request = dataclasses.replace(request, connect_timeout_s=timeouts.connect_s)
    if timeouts.first_token_s is not None and not request.streamed:  # the first token must be seen as it comes
        request = dataclasses.replace(request, streamed=True)
    return generate(request)


class _TotalTimeout(UpstreamTimeoutError):
    """The request's total time ran out: a 504 ``upstream_timeout`` like any, but no upstream's failure."""


def _total_timeout(total_s: Optional[float], *, started: bool) -> UpstreamTimeoutError:
    what = "finish" if started else "start"
    return _TotalTimeout(f"the answer did not {what} within the total timeout of {total_s:g} s")


def _is_total_timeout(exc: BaseException) -> bool:
    return isinstance(exc, _TotalTimeout)


def _caller(call: Call) -> str:
    """Who a failure is counted against: the key's name (the auth stage's; not the client-chosen ``user``)."""
    return call.ctx.key_name or "anonymous"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, UnimodelError):
        return f"{exc.status_code} {exc.code}"
    return type(exc).__name__
