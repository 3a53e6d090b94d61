"""The limits stages: requests and tokens per window per key and per user, the high-reasoning quota, and
in-flight caps, in two parts that share one store.

* :class:`RequestLimitsStage` (``limits.requests``, right after auth, before the body is read): the key's
  requests per window and its in-flight slot, which need nothing of the body. A key over its ``rpm`` or
  ``max_concurrent`` is refused before the server reads, parses or validates a byte of what it sent.
* :class:`LimitsStage` (``limits``, after validate, before the images are fetched or decoded and before
  idempotency): the end user's and the high-reasoning requests, and every token limit, which need the
  validated request (its ``user``, the reasoning level it is charged at, its prompt and ``max_tokens``).

Each ``enter`` asks the store to take what its plan says (``policy.py``) in one step (one Lua script in
Redis), puts OpenAI's ``x-ratelimit-*`` headers on the response (refusals included; the tightest bucket of both
parts), and refuses with a 429 ``rate_limit_exceeded`` carrying ``Retry-After`` (and ``retry-after-ms``, which
the official clients prefer) when a bucket is short.

A request once admitted counts, whatever happens next (as OpenAI counts unsuccessful requests): a refusal by a
later stage, a body that does not parse, an upstream that fails. Otherwise a client could send unparseable
20 MiB bodies for ever without touching its limit. Tokens are settled in ``exit``: the reservation (an
estimate of the prompt plus what it may write) is replaced by ``ctx.usage``, the engine's count or, when the
request ended without one after the engine was asked (its client left, its stream broke), the chat service's
estimate; nothing when the engine was never asked. The in-flight slot is freed in the first part's ``exit``.

When the store cannot answer (Redis down), ``on_store_failure`` decides: ``open`` admits the call without
limits (the second part then does not ask again), ``closed`` refuses it with a 503 ``limits_unavailable`` and
``Retry-After``; both are counted in ``/ready``. Written here rather than taken from a library: the ones for
ASGI limit requests per route in middleware, with no token reservations, no settlement at the end of a stream,
and no quota chosen by a field of the validated request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Literal, Optional

from unimodel.errors import LimitsUnavailableError, RateLimitError
from unimodel.gateway.limits.memory import MemoryStore
from unimodel.gateway.limits.policy import LimitDefaults, Plan, describe, request_plan, token_plan
from unimodel.gateway.limits.store import Decision, LimitStore, StoreUnavailable, seconds_to
from unimodel.service.pipeline import Call, Stage, StageState
from unimodel.service.usage_estimate import UsageEstimator

log = logging.getLogger("unimodel.limits")

OnStoreFailure = Literal["open", "closed"]


def go_duration(seconds: float) -> str:
    """A duration as OpenAI's ``x-ratelimit-reset-*`` headers write it (Go's format): ``20ms``, ``1s``,
    ``1.5s``, ``6m0s``, ``1h2m3s``."""
    ms = max(0, math.ceil(seconds * 1000))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "") + f"{secs}s"


def rate_limit_headers(plan: Plan, decision: Decision,
                       before: Optional[tuple[Plan, Decision]] = None) -> dict[str, str]:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` of the tightest bucket of each unit (a short
    one first), as OpenAI sends them; ``reset`` is the time until that bucket is full again. ``before``: what
    the first part of the limits took for the same call (its buckets compete for tightest, none is short)."""
    entries = [(b, level, not decision.allowed and level < b.cost) for b, level in zip(plan.buckets, decision.levels)]
    if before is not None:
        entries = [(b, level, False) for b, level in zip(before[0].buckets, before[1].levels)] + entries
    headers: dict[str, str] = {}
    for unit in ("requests", "tokens"):
        best: Optional[tuple[bool, float, int]] = None
        for i, (b, level, short) in enumerate(entries):
            if b.unit != unit:
                continue
            rank = (not short, math.floor(level), i)
            if best is None or rank < best:
                best = rank
        if best is None:
            continue
        b, level, _ = entries[best[2]]
        headers[f"x-ratelimit-limit-{unit}"] = str(b.limit)
        headers[f"x-ratelimit-remaining-{unit}"] = str(max(0, math.floor(level)))
        headers[f"x-ratelimit-reset-{unit}"] = go_duration(seconds_to(level, b.limit, b.limit, plan.window_s))
    return headers


@dataclass(slots=True, eq=False)
class _Held:
    """What an admitted call took, until its ``exit`` settles it; ``decision``: the store's answer (for the
    second part's headers)."""

    plan: Plan
    decision: Decision
    lease: Optional[str] = None  # the in-flight slot to free (``""`` in memory, where a slot has no name)


_ADMITTED: StageState[_Held] = StageState("limits.requests")
_HELD: StageState[_Held] = StageState("limits")


class LimitsStage(Stage):
    """The second part (tokens, users, high reasoning), and the owner of the store and the counts; its first
    part is :attr:`requests`, a stage of its own that the composition places before the parse stage."""

    name = "limits"

    def __init__(self, defaults: LimitDefaults, store: Optional[LimitStore] = None, *,
                 on_store_failure: OnStoreFailure = "open", concurrency_retry_s: float = 1.0,
                 estimator: UsageEstimator = UsageEstimator()) -> None:
        self.defaults = defaults
        self.store: LimitStore = store if store is not None else MemoryStore()
        self.on_store_failure = on_store_failure
        self.concurrency_retry_s = concurrency_retry_s
        self.estimator = estimator
        self.counts = {"admitted": 0, "refused": 0, "admitted_unchecked": 0, "refused_unavailable": 0,
                       "release_failed": 0}
        self._background: set[asyncio.Task[Any]] = set()
        self.requests = RequestLimitsStage(self)

    async def start(self) -> None:
        await self.store.start()

    async def aclose(self) -> None:
        if self._background:
            await asyncio.wait(set(self._background), timeout=2.0)
        await self.store.aclose()

    def status(self) -> dict[str, Any]:
        return {**self.store.status(), "on_store_failure": self.on_store_failure, **self.counts}

    async def check(self) -> Optional[str]:
        if await self.store.check():
            return None
        if self.on_store_failure == "closed":
            return ("Redis is down: requests that limits apply to are refused with 503 limits_unavailable "
                    "(--limits-on-redis-failure closed)")
        return "Redis is down: requests are admitted without rate limits or quotas (--limits-on-redis-failure open)"

    # ---- per request --------------------------------------------------------------------------------

    async def enter(self, call: Call) -> None:
        request = call.engine_request
        ctx = call.ctx
        if request is None or ctx.limits == "unchecked":  # the store was down a moment ago: open, as then
            return
        effort = ctx.reasoning.charged if ctx.reasoning is not None else request.effort
        try:
            plan = token_plan(ctx.key_name, ctx.caller, ctx.user, request, self.defaults, effort=effort,
                              prompt_tokens=functools.partial(self.estimator.prompt_tokens, request))
        except RateLimitError:
            self._no_quota(call)
            raise
        if plan is None:
            return
        before = call.get(_ADMITTED)
        decision = await self._admit(call, plan, "", before)
        if decision is not None:
            if before is None:
                self.counts["admitted"] += 1
            call.put(_HELD, _Held(plan, decision))

    async def exit(self, call: Call, error: Optional[BaseException]) -> None:
        held = call.pop(_HELD)
        if held is None:
            return
        plan, used = held.plan, self._used(call)
        returns = [float(b.cost - used) if b.unit == "tokens" else 0.0 for b in plan.buckets]
        if any(returns):
            await self._release(plan, returns, None)

    # ---- shared by both parts -----------------------------------------------------------------------

    @staticmethod
    def _no_quota(call: Call) -> None:
        """A quota of 0: retrying cannot help, so the official clients are told not to."""
        call.response_headers["x-should-retry"] = "false"
        call.ctx.limits = "refused"

    async def _admit(self, call: Call, plan: Plan, lease: str,
                     before: Optional[_Held] = None) -> Optional[Decision]:
        """Take ``plan`` or refuse the call; ``None``: the store is down and the call goes on unchecked."""
        ctx = call.ctx
        try:
            decision = await self._acquire(plan, lease)
        except StoreUnavailable:
            if self.on_store_failure == "closed":
                self.counts["refused_unavailable"] += 1
                raise LimitsUnavailableError("Rate limits cannot be checked right now; please retry shortly.",
                                             retry_after=1) from None
            self.counts["admitted_unchecked"] += 1
            ctx.limits = "unchecked"
            return None
        call.response_headers.update(rate_limit_headers(
            plan, decision, (before.plan, before.decision) if before is not None else None))
        if not decision.allowed:
            self.counts["refused"] += 1
            ctx.limits = "refused"  # for the observers: ours, not an upstream's 429
            raise self._refusal(call, plan, decision)
        return decision

    async def _release(self, plan: Plan, returns: list[float], lease: Optional[str]) -> None:
        if not self.store.remote:
            await self.store.release(plan, returns, lease)
            return
        # A task of its own only so that aclose waits for the releases still under way at shutdown; no shield:
        # the pipeline runs every exit to its end, even a client's that left. A failure is counted (and, unless
        # Redis is down, logged) by _released.
        with contextlib.suppress(Exception):
            await self._spawn(self.store.release(plan, returns, lease))

    # ---- helpers ------------------------------------------------------------------------------------

    async def _acquire(self, plan: Plan, lease: str) -> Decision:
        if not self.store.remote:
            return await self.store.acquire(plan, lease)  # never suspends: nothing can interrupt it
        task = asyncio.ensure_future(self.store.acquire(plan, lease))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # the client left while Redis answered: whatever the script took goes back when it is known
            task.add_done_callback(lambda t: self._undo(plan, lease, t))
            raise

    def _undo(self, plan: Plan, lease: str, task: "asyncio.Future[Decision]") -> None:
        if task.cancelled() or task.exception() is not None or not task.result().allowed:
            return
        self._spawn(self.store.release(plan, [float(b.cost) for b in plan.buckets], lease or None))

    def _spawn(self, release: Coroutine[Any, Any, None]) -> "asyncio.Task[None]":
        task = asyncio.ensure_future(release)
        self._background.add(task)
        task.add_done_callback(self._released)
        return task

    def _released(self, task: "asyncio.Task[None]") -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.counts["release_failed"] += 1  # Redis down: leases and refills expire on their own
            if not isinstance(task.exception(), StoreUnavailable):
                log.error("giving back rate-limit reservations failed", exc_info=task.exception())

    @staticmethod
    def _used(call: Call) -> int:
        """Tokens to charge: the usage (the engine's, or the chat service's estimate when the engine was asked
        and reported none); none for a replay, or when the engine was never asked."""
        ctx = call.ctx
        if ctx.idempotency == "replayed" or ctx.usage is None:  # a replay: answered from the store, no work
            return 0
        return ctx.usage.total_tokens

    def _refusal(self, call: Call, plan: Plan, decision: Decision) -> RateLimitError:
        if decision.concurrency_full:
            wait = self.concurrency_retry_s
            message = (f"Too many requests in flight for key '{plan.key}': at most {plan.max_concurrent} at a "
                       "time. Please retry when one has finished.")
        else:
            short = [(seconds_to(level, b.cost, b.limit, plan.window_s), b, level)
                     for b, level in zip(plan.buckets, decision.levels) if level < b.cost]
            wait, b, level = max(short, key=lambda s: s[0])  # the bucket that takes longest to cover its cost
            message = (f"Rate limit reached for {describe(b, plan.window_s)} on key '{plan.key}': limit {b.limit}, "
                       f"remaining {max(0, math.floor(level))}, requested {b.cost}. Please try again in "
                       f"{go_duration(wait)}.")
            if b.scope == "high reasoning":
                message += (f" Requests with a reasoning_effort below '{self.defaults.high_reasoning_effort}' do "
                            "not count against this quota.")
        call.response_headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
        return RateLimitError(message, retry_after=max(1, math.ceil(wait)))


class RequestLimitsStage(Stage):
    """The first part: the key's requests per window and its in-flight slot, before the body is read (the
    module docstring says why). Built by :class:`LimitsStage`, whose store and counts it shares."""

    name = "limits.requests"

    def __init__(self, limits: LimitsStage) -> None:
        self.limits = limits

    async def enter(self, call: Call) -> None:
        limits, ctx = self.limits, call.ctx
        try:
            plan = request_plan(ctx.key_name, ctx.caller, limits.defaults)
        except RateLimitError:
            limits._no_quota(call)
            raise
        if plan is None:
            return
        # a lease names the call's in-flight slot in Redis; the memory store only counts slots
        lease = uuid.uuid4().hex if plan.concurrency_id is not None and limits.store.remote else ""
        decision = await limits._admit(call, plan, lease)
        if decision is not None:
            limits.counts["admitted"] += 1
            call.put(_ADMITTED, _Held(plan, decision, lease if plan.concurrency_id is not None else None))

    async def exit(self, call: Call, error: Optional[BaseException]) -> None:
        held = call.pop(_ADMITTED)
        if held is not None and held.lease is not None:  # its request stays counted; its slot is free again
            await self.limits._release(held.plan, [0.0] * len(held.plan.buckets), held.lease)
