"""Load shapes: closed loop (N workers, each sending its next request when the last one ends) and open loop
(Poisson arrivals at a rate, from a seeded RNG, whatever the server's pace).

Each worker owns one ``httpx.AsyncClient`` of one connection (:func:`unimodel.bench.client.make_client`): a
shared pool serializes on its own bookkeeping well before a server does. The open loop keeps a pool of such
one-connection clients, grown on demand up to ``max_connections``; an arrival that finds none free waits for
one (its ``scheduled`` time says when it was due).

Every finished request lands in a :class:`RunState` at once, so a run that is cancelled (Ctrl-C) still has
everything measured so far; requests then in flight are counted as ``in_flight`` (reported as incomplete).
Warm-up requests are sent the same way first and not recorded. The sweep (closed loop, from one stream to
saturation) is driven by :mod:`unimodel.bench.runner` with :func:`sweep_levels` and :func:`saturated`.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal, Optional

import httpx

from unimodel.bench.client import RequestRecord, Target, make_client, send
from unimodel.bench.workloads import Workload

DEFAULT_REQUESTS = 100


@dataclass(frozen=True)
class LoadPlan:
    mode: Literal["closed", "open"] = "closed"
    concurrency: int = 1  # closed loop: workers
    rate: Optional[float] = None  # open loop: mean arrivals per second
    requests: Optional[int] = None  # measured requests (default DEFAULT_REQUESTS unless duration_s)
    duration_s: Optional[float] = None  # or: send for this long, then let the requests in flight finish
    warmup: int = 0
    seed: int = 0
    max_connections: int = 1024  # open loop: most requests in flight at once

    def request_limit(self) -> Optional[int]:
        if self.requests is None and self.duration_s is None:
            return DEFAULT_REQUESTS
        return self.requests


@dataclass
class RunState:
    """One run, live: what it has measured so far, and what is in flight."""

    label: str
    effort: Optional[str]
    mode: Literal["closed", "open"]
    concurrency: Optional[int] = None
    rate: Optional[float] = None
    records: list[RequestRecord] = field(default_factory=list)
    in_flight: int = 0
    started: Optional[float] = None  # perf_counter() when measuring began
    finished: bool = False
    on_record: Optional[Callable[["RunState", RequestRecord], None]] = None

    def add(self, record: RequestRecord) -> None:
        self.records.append(record)
        if self.on_record is not None:
            self.on_record(self, record)


class _Requests:
    """Hands out request bodies in workload order until the count or the deadline is reached."""

    def __init__(self, workload: Workload, model: str, effort: Optional[str], first_index: int,
                 limit: Optional[int], deadline: Optional[float]) -> None:
        self.workload, self.model, self.effort = workload, model, effort
        self.index, self.end = first_index, None if limit is None else first_index + limit
        self.deadline = deadline

    def take(self, at: Optional[float] = None) -> Optional[tuple[int, str, dict]]:
        if self.end is not None and self.index >= self.end:
            return None
        if self.deadline is not None and (at if at is not None else time.perf_counter()) >= self.deadline:
            return None
        index = self.index
        self.index += 1
        kind, body = self.workload.request(index, self.model, self.effort)
        return index, kind, body


async def _close_all(clients: list[httpx.AsyncClient]) -> None:
    await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)


Phase = Callable[["_Requests", Optional[RunState]], Awaitable[None]]


async def _warm_up_then_measure(phase: Phase, workload: Workload, model: str, plan: LoadPlan,
                                state: RunState) -> None:
    """``plan.warmup`` requests not recorded, then the measured ones (bounded by count and ``duration_s``)."""
    if plan.warmup:
        await phase(_Requests(workload, model, state.effort, 0, plan.warmup, None), None)
    state.started = time.perf_counter()
    deadline = state.started + plan.duration_s if plan.duration_s else None
    await phase(_Requests(workload, model, state.effort, plan.warmup, plan.request_limit(), deadline), state)
    state.finished = True


async def run_closed(target: Target, workload: Workload, model: str, plan: LoadPlan, state: RunState) -> None:
    """``plan.concurrency`` workers, each with its own connection, each sending back to back."""
    clients = [make_client(target) for _ in range(plan.concurrency)]
    workers: list[asyncio.Task[None]] = []

    async def phase(requests: _Requests, sink: Optional[RunState]) -> None:
        async def worker(client: httpx.AsyncClient) -> None:
            while (item := requests.take()) is not None:
                index, kind, body = item
                if sink is not None:  # left as is when cancelled: what was in flight at Ctrl-C is reported
                    sink.in_flight += 1
                record = await send(client, target.chat_url, body, index=index, kind=kind, effort=state.effort)
                if sink is not None:  # none during the warm-up
                    sink.in_flight -= 1
                    sink.add(record)

        workers[:] = [asyncio.create_task(worker(c)) for c in clients]
        await asyncio.gather(*workers)

    try:
        await _warm_up_then_measure(phase, workload, model, plan, state)
    finally:
        # a cancelled gather (Ctrl-C) returns before its workers have unwound: wait for them before their
        # clients close, or a client closes under a request still being cancelled
        for task in workers:
            task.cancel()
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)
        await _close_all(clients)


class _ClientPool:
    """One-connection clients, reused most-recent-first, created on demand up to ``limit``."""

    def __init__(self, target: Target, limit: int) -> None:
        self.target = target
        self.slots = asyncio.Semaphore(limit)
        self.idle: list[httpx.AsyncClient] = []
        self.all: list[httpx.AsyncClient] = []

    async def acquire(self) -> httpx.AsyncClient:
        await self.slots.acquire()
        if self.idle:
            return self.idle.pop()
        client = make_client(self.target)
        self.all.append(client)
        return client

    def release(self, client: httpx.AsyncClient) -> None:
        self.idle.append(client)
        self.slots.release()


async def run_open(target: Target, workload: Workload, model: str, plan: LoadPlan, state: RunState) -> None:
    """Poisson arrivals at ``plan.rate`` per second (exponential gaps from ``random.Random(plan.seed)``)."""
    if not plan.rate or plan.rate <= 0:
        raise ValueError("the open loop needs a positive rate")
    rng = random.Random(plan.seed)
    pool = _ClientPool(target, plan.max_connections)
    tasks: set[asyncio.Task[None]] = set()

    async def one(index: int, kind: str, body: dict, due: float, sink: Optional[RunState]) -> None:
        client = await pool.acquire()
        try:
            record = await send(client, target.chat_url, body, index=index, kind=kind, effort=state.effort,
                                scheduled=due)
        finally:
            pool.release(client)
        if sink is not None:  # not when cancelled: what was in flight at Ctrl-C stays counted
            sink.in_flight -= 1
            sink.add(record)

    async def arrivals(requests: _Requests, sink: Optional[RunState]) -> None:
        due = time.perf_counter()
        while True:
            due += rng.expovariate(plan.rate)  # type: ignore[arg-type]
            item = requests.take(at=due)
            if item is None:
                break
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            if sink is not None:
                sink.in_flight += 1
            task = asyncio.create_task(one(*item, due, sink))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*list(tasks))

    try:
        await _warm_up_then_measure(arrivals, workload, model, plan, state)
    finally:
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.gather(*list(tasks), return_exceptions=True)
        await _close_all(pool.all)


def sweep_levels(max_concurrency: int) -> list[int]:
    """1, 2, 4, ... up to ``max_concurrency`` (which is always the last level)."""
    levels, c = [], 1
    while c < max_concurrency:
        levels.append(c)
        c *= 2
    return levels + [max_concurrency]


def saturated(requests_per_s: list[float], error_fractions: list[float], min_gain: float = 0.05) -> bool:
    """Whether the sweep should stop after its latest level: it added less than ``min_gain`` requests/s over
    the best level before it, or more than half of its requests failed."""
    if error_fractions and error_fractions[-1] > 0.5:
        return True
    if len(requests_per_s) < 2:
        return False
    return requests_per_s[-1] < max(requests_per_s[:-1]) * (1 + min_gain)
