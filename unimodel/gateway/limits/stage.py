"""The limits stage: requests and tokens per window per key and per user, the high-reasoning quota, and
in-flight caps, after the image policy and before idempotency.

``enter`` asks the store to take what the call's plan says (``policy.py``) in one step, puts OpenAI's
``x-ratelimit-*`` headers on the response (refusals included), and refuses with a 429 ``rate_limit_exceeded``
carrying ``Retry-After`` (and ``retry-after-ms``, which the official clients prefer) when a bucket is short.
``exit`` settles: a token reservation is replaced by the real usage (``ctx.usage``; when a stream failed or its
client left before any usage was reported, an estimate of four characters a token over the prompt and what
was sent; nothing when no output was produced), the concurrency slot is freed, and when a later stage refused
the call (the engine was never asked) everything is given back, the request too.

When the store cannot answer (Redis down), ``on_store_failure`` decides: ``open`` admits the call without
limits, ``closed`` refuses it with a 503 ``limits_unavailable`` and ``Retry-After``; both are counted in
``/ready``. Written here rather than taken from a library: the ones for ASGI limit requests per route in
middleware, with no token reservations, no settlement at the end of a stream, and no quota chosen by a field of
the validated request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, Optional

from unimodel.engines.base import GenerationRequest
from unimodel.errors import LimitsUnavailableError, RateLimitError
from unimodel.gateway.limits.memory import MemoryStore
from unimodel.gateway.limits.policy import LimitDefaults, Plan, describe, plan_for
from unimodel.gateway.limits.store import Decision, LimitStore, StoreUnavailable, seconds_to
from unimodel.protocol.events import Event
from unimodel.service.pipeline import Call, Generate, Stage, StageState

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


def rate_limit_headers(plan: Plan, decision: Decision) -> dict[str, str]:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` of the tightest bucket of each unit (a short
    one first), as OpenAI sends them; ``reset`` is the time until that bucket is full again."""
    headers: dict[str, str] = {}
    for unit in ("requests", "tokens"):
        best: Optional[tuple[bool, float, int]] = None
        for i, b in enumerate(plan.buckets):
            if b.unit != unit:
                continue
            level = decision.levels[i]
            rank = (decision.allowed or level >= b.cost, math.floor(level), i)
            if best is None or rank < best:
                best = rank
        if best is None:
            continue
        b, level = plan.buckets[best[2]], decision.levels[best[2]]
        headers[f"x-ratelimit-limit-{unit}"] = str(b.limit)
        headers[f"x-ratelimit-remaining-{unit}"] = str(max(0, math.floor(level)))
        headers[f"x-ratelimit-reset-{unit}"] = go_duration(seconds_to(level, b.limit, b.limit, plan.window_s))
    return headers


@dataclass(slots=True, eq=False)
class _Held:
    """What an admitted call took, until its ``exit`` gives it back."""

    plan: Plan
    lease: Optional[str]  # the in-flight slot to free (``""`` in memory, where a slot has no name); None: none
    started: bool = False  # every stage entered and the engine asked (else a later stage refused the call)
    output_chars: int = 0  # text streamed, for an estimate when no usage came


_HELD: StageState[_Held] = StageState("limits")


class LimitsStage(Stage):
    name = "limits"

    def __init__(self, defaults: LimitDefaults, store: Optional[LimitStore] = None, *,
                 on_store_failure: OnStoreFailure = "open", concurrency_retry_s: float = 1.0) -> None:
        self.defaults = defaults
        self.store: LimitStore = store if store is not None else MemoryStore()
        self.on_store_failure = on_store_failure
        self.concurrency_retry_s = concurrency_retry_s
        self.counts = {"admitted": 0, "refused": 0, "admitted_unchecked": 0, "refused_unavailable": 0,
                       "release_failed": 0}
        self._background: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        await self.store.start()

    async def aclose(self) -> None:
        if self._background:
            await asyncio.wait(set(self._background), timeout=2.0)
        await self.store.aclose()

    def status(self) -> dict[str, Any]:
        return {**self.store.status(), "on_store_failure": self.on_store_failure, **self.counts}

    # ---- per request --------------------------------------------------------------------------------

    async def enter(self, call: Call) -> None:
        request = call.engine_request
        if request is None:
            return
        ctx = call.ctx
        try:
            plan = plan_for(ctx.key_name, ctx.caller, ctx.user, request, self.defaults)
        except RateLimitError:  # a quota of 0: retrying cannot help, so the official clients are told not to
            call.response_headers["x-should-retry"] = "false"
            ctx.limits = "refused"
            raise
        if plan is None:
            return
        # a lease names the call's in-flight slot in Redis; the memory store only counts slots
        lease = uuid.uuid4().hex if plan.concurrency_id is not None and self.store.remote else ""
        try:
            decision = await self._acquire(plan, lease)
        except StoreUnavailable:
            if self.on_store_failure == "closed":
                self.counts["refused_unavailable"] += 1
                raise LimitsUnavailableError("Rate limits cannot be checked right now; please retry shortly.",
                                             retry_after=1) from None
            self.counts["admitted_unchecked"] += 1
            ctx.limits = "unchecked"
            return
        call.response_headers.update(rate_limit_headers(plan, decision))
        if not decision.allowed:
            self.counts["refused"] += 1
            ctx.limits = "refused"  # for the observers: ours, not an upstream's 429
            raise self._refusal(call, plan, decision)
        self.counts["admitted"] += 1
        call.put(_HELD, _Held(plan, lease if plan.concurrency_id is not None else None))

    def wrap(self, call: Call, generate: Generate) -> Generate:
        held = call.get(_HELD)
        if held is None:
            return generate
        held.started = True  # wrap runs once every stage has entered, as the engine call is composed
        if not held.plan.has_tokens:
            return generate

        async def counted(request: GenerationRequest) -> AsyncIterator[Event]:
            async with contextlib.aclosing(generate(request)) as events:  # type: ignore[type-var]
                async for event in events:
                    text = getattr(event, "text", None)
                    if text:
                        held.output_chars += len(text)
                    yield event

        return counted

    async def exit(self, call: Call, error: Optional[BaseException]) -> None:
        held = call.pop(_HELD)
        if held is None:
            return
        plan = held.plan
        if not held.started:  # a later stage refused: the engine never saw the call
            returns = [float(b.cost) for b in plan.buckets]
        else:
            used = self._used(call, held) if plan.has_tokens else 0
            returns = [float(b.cost - used) if b.unit == "tokens" else 0.0 for b in plan.buckets]
        if held.lease is None and not any(returns):
            return
        if not self.store.remote:
            await self.store.release(plan, returns, held.lease)
            return
        # A task of its own only so that aclose waits for the releases still under way at shutdown; no shield:
        # the pipeline runs every exit to its end, even a client's that left. A failure is counted (and, unless
        # Redis is down, logged) by _released.
        with contextlib.suppress(Exception):
            await self._spawn(self.store.release(plan, returns, held.lease))

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
    def _used(call: Call, held: _Held) -> int:
        ctx = call.ctx
        if ctx.idempotency == "replayed":  # answered from the store: the model did no work
            return 0
        if ctx.usage is not None:
            return ctx.usage.total_tokens
        if held.output_chars == 0:
            return 0
        request = call.engine_request
        prompt_chars = sum(len(m.text()) for m in request.messages) if request is not None else 0
        return (prompt_chars + held.output_chars + 3) // 4

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
