"""State in Redis must not outlive its request (shield item 10): an in-flight slot (``--max-concurrent``) and an
idempotency claim are short leases, renewed while their request runs and given back for sure when it ends.

Real uvicorn gateways (and one real ``unimodel serve`` process, killed) in front of an in-memory engine that
holds or fails the requests the test names, sharing a real redis-server that the test pauses (SIGSTOP) or
keeps running:

* Redis paused for 2.5 s exactly while a request ends (its releases time out), then resumed: within a few
  seconds the same key is admitted again — no 429 "too many in flight", no 409 ``idempotency_key_in_use`` —
  and a stored response is replayed (before: both held for 15 minutes);
* a replica killed mid-request (it never releases): its slot and claim free themselves after the short lease;
* a request that runs for several leases keeps its slot and claim (renewed): two replicas never admit more than
  ``--max-concurrent`` between them, and a repeat of it is a 409, never a second engine call.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

import httpx
import pytest
import redis

from tests.support.fake_engine import InMemoryEngine
from tests.support.live_server import LiveServer, free_port
from tests.support.redis_server import RedisServer
from tests.support.scripted_upstream import ScriptedUpstream
from unimodel.config import Settings
from unimodel.engines.base import GenerationRequest
from unimodel.errors import UpstreamError
from unimodel.protocol.events import FLUSH, ContentDelta, Event, Finish, Usage
from unimodel.protocol.openai import ModelCard

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

KEY = "sk-redis-state-test"
HEADERS = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


class Held(InMemoryEngine):
    """Serves ``model``; a request is named by its prompt: one named by :meth:`hold` waits after its first delta
    until :meth:`go` (at most 60 s), the next one named by :meth:`fail` then fails; it counts the calls per name."""

    kind = "held"

    def __init__(self, model: str = "m") -> None:
        self.model = model
        self.calls: Counter[str] = Counter()
        self._started: dict[str, threading.Event] = {}
        self._go: dict[str, threading.Event] = {}
        self._failing: set[str] = set()

    def models(self) -> list[ModelCard]:
        return [ModelCard(id=self.model, max_model_len=100_000)]

    def hold(self, name: str) -> threading.Event:
        """The event set once the request named ``name`` is being generated (it holds every stage's state)."""
        self._go[name] = threading.Event()
        self._started[name] = threading.Event()
        return self._started[name]

    def go(self, name: str) -> None:
        self._go[name].set()

    def fail(self, name: str) -> None:
        self._failing.add(name)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        name = request.messages[-1].text()
        self.calls[name] += 1
        yield ContentDelta("first ")
        yield FLUSH
        gate = self._go.get(name)
        if gate is not None:
            self._started[name].set()
            deadline = time.monotonic() + 60
            while not gate.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        if name in self._failing:
            self._failing.discard(name)
            raise UpstreamError("the upstream connection failed")
        yield ContentDelta("done")
        yield Usage(5, 2)
        yield Finish("stop")


def body(name: str, model: str = "m") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": name}]}).encode()


def post(url: str, data: bytes, idempotency_key: Optional[str] = None, timeout: float = 30) -> httpx.Response:
    headers = dict(HEADERS)
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return httpx.post(url.rstrip("/") + "/chat/completions", content=data, headers=headers, timeout=timeout)


def settings(redis: RedisServer, prefix: str, **kw: Any) -> Settings:
    return Settings(engine="upstream", upstream="http://127.0.0.1:9/v1", api_keys=[KEY], redis=redis.url,
                    redis_prefix=prefix, **kw)


def checked(response: httpx.Response) -> bool:
    """Answered after the limits were checked in Redis (not admitted unchecked while it was away)."""
    return "x-ratelimit-limit-requests" in response.headers


def until(probe: Any, done: Any, within_s: float, every_s: float = 0.2) -> list[Any]:
    """``probe()`` until ``done(result)`` or ``within_s`` has passed; every result, the last one last."""
    seen: list[Any] = []
    deadline = time.monotonic() + within_s
    while True:
        seen.append(probe())
        if done(seen[-1]) or time.monotonic() > deadline:
            return seen
        time.sleep(every_s)


@pytest.fixture()
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, to pause."""
    with RedisServer() as server:
        yield server


def prefix() -> str:
    return f"rs{uuid.uuid4().hex[:8]}:"


def test_the_default_lease_and_claim_are_short() -> None:
    defaults = Settings()
    assert defaults.limits_lease_s <= 60 and defaults.idempotency_claim_ttl_s <= 60


# ---- a Redis pause as a request ends ------------------------------------------------------------------------

PAUSED_S = 2.5

MODES: dict[str, dict[str, Any]] = {
    # the in-flight slot: the key is refused 429 "too many in flight" while a lost release holds it
    "slot": dict(rpm=100_000, max_concurrent=1, idempotency=False),
    # the claim of a request that failed: a retry is refused 409 in_use while a lost release holds it
    "claim-released": dict(idempotency_in_flight="conflict"),
    # the claim of a request that succeeded: its response is stored late, and a retry replays it
    "claim-stored": dict(idempotency_in_flight="conflict"),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_a_redis_pause_as_a_request_ends_does_not_hold_its_key(own_redis: RedisServer, mode: str) -> None:
    engine = Held()
    idempotency_key = None if mode == "slot" else uuid.uuid4().hex
    name = f"pause-{mode}-{uuid.uuid4().hex[:8]}"
    started = engine.hold(name)
    if mode == "claim-released":
        engine.fail(name)
    with LiveServer(settings(own_redis, prefix(), **MODES[mode]), engine) as live, ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, live.base_url, body(name), idempotency_key)
        assert started.wait(20), "the first request never reached the engine"
        own_redis.pause()
        paused_at = time.monotonic()
        try:
            engine.go(name)  # it ends now, while Redis answers nothing: every release it makes times out
            answer = first.result(timeout=20)
            assert answer.status_code == (502 if mode == "claim-released" else 200), answer.text
            time.sleep(max(0.0, paused_at + PAUSED_S - time.monotonic()))
        finally:
            own_redis.resume()
        time.sleep(1.5)  # past the stages' one-second backoff after a failed Redis call: the next ones ask Redis

        def again() -> httpx.Response:
            return post(live.base_url, body(name), idempotency_key)

        if mode == "slot":
            seen = until(again, lambda r: r.status_code == 200 and checked(r), within_s=8)
            assert seen[-1].status_code == 200 and checked(seen[-1]), [(r.status_code, r.text[:120]) for r in seen]
        else:
            seen = until(again, lambda r: r.status_code != 409, within_s=8)
            assert seen[-1].status_code == 200, [(r.status_code, r.text[:120]) for r in seen]
            if mode == "claim-stored":  # the stored response, not a second engine call
                assert seen[-1].headers.get("idempotent-replayed") == "true" and engine.calls[name] == 1
            else:  # a retry runs (its claim taken in Redis: a repeat of it is then replayed)
                assert engine.calls[name] == 2
                replay = again()
                assert replay.status_code == 200 and replay.headers.get("idempotent-replayed") == "true"


# ---- a replica that dies mid-request --------------------------------------------------------------------------

SHORT: dict[str, Any] = dict(rpm=100_000, max_concurrent=1, limits_lease_s=1.0, idempotency_claim_ttl_s=1.0,
             idempotency_in_flight="conflict")


class Replica:
    """``unimodel serve`` in a process of its own (to kill), in front of the scripted upstream."""

    def __init__(self, upstream: str, redis: RedisServer, prefix: str, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.stderr = log.open("wb")
        flags = ["--rpm", "100000", "--max-concurrent", "1", "--limits-lease-s", "1", "--idempotency-claim-ttl-s",
                 "1", "--idempotency-in-flight", "conflict"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unimodel.cli", "serve", "--engine", "upstream", "--upstream", upstream,
             "--port", str(self.port), "--redis", redis.url, "--api-key", KEY, "--log-level", "warning", *flags],
            stdout=subprocess.DEVNULL, stderr=self.stderr, env={**os.environ, "UNIMODEL_REDIS_PREFIX": prefix})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self, within_s: float = 60) -> None:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"unimodel serve exited early: {self.log.read_text()[-2000:]}"
            try:
                if httpx.get(self.url[: -len("/v1")] + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("unimodel serve did not become ready")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=20)
        self.stderr.close()


def holds(server: RedisServer, prefix: str) -> bool:
    """Whether Redis holds an in-flight slot and an idempotency claim under ``prefix``."""
    client = redis.Redis.from_url(server.url, socket_timeout=2)
    try:
        keys = list(client.scan_iter(match=prefix + "*"))
        slots = [k for k in keys if client.type(k) == b"zset" and client.zcard(k) > 0]
        values = {k: client.get(k) for k in keys if b":idem:" in k}
        claims = [k for k, v in values.items() if isinstance(v, bytes) and v.startswith(b"I")]
        return bool(slots and claims)
    finally:
        client.close()


def test_a_dead_replicas_slot_and_claim_free_themselves_after_the_short_lease(
        own_redis: RedisServer, scripted_upstream: ScriptedUpstream, tmp_path: Path) -> None:
    shared = prefix()
    dying = Replica(scripted_upstream.base_url, own_redis, shared, tmp_path / "dying.log")
    try:
        dying.wait_ready()
        data, key = body("What is 2+2?", model="slow"), uuid.uuid4().hex  # the upstream answers it after 3 s
        survivor_engine = Held(model="slow")
        with LiveServer(settings(own_redis, shared, **SHORT), survivor_engine) as survivor, \
                ThreadPoolExecutor(1) as pool:
            pool.submit(post, dying.url, data, key, 10)  # fails once the replica is killed: ignored
            assert until(lambda: holds(own_redis, shared), bool, within_s=15, every_s=0.05)[-1], \
                "the dying replica never took the slot and the claim"
            assert post(survivor.base_url, data, key).status_code == 429
            dying.kill()  # mid-request: it never gives back its slot nor its claim
            killed_at = time.monotonic()
            seen = until(lambda: post(survivor.base_url, data, key),
                         lambda r: r.status_code == 200 and checked(r), within_s=15)
            freed_after = time.monotonic() - killed_at
            assert seen[-1].status_code == 200 and checked(seen[-1]), [(r.status_code, r.text[:120]) for r in seen]
            assert "idempotent-replayed" not in seen[-1].headers and survivor_engine.calls["What is 2+2?"] == 1
            assert {r.status_code for r in seen[:-1]} <= {429, 409}
            assert freed_after < 10  # a lease of 1 s (not 15 minutes), on a noisy machine
    finally:
        dying.kill()


# ---- a request that runs for several leases -------------------------------------------------------------------

def test_a_long_request_keeps_its_slot_and_claim_and_replicas_never_admit_past_the_cap(
        own_redis: RedisServer) -> None:
    shared = prefix()
    lease_s = 2.0  # renewed every 0.67 s: a loop stalled for over a second on a busy machine still keeps it
    lease = dict(rpm=100_000, max_concurrent=2, limits_lease_s=lease_s, idempotency_claim_ttl_s=lease_s,
                 idempotency_in_flight="conflict")
    engine = Held()  # one engine behind both replicas, so that a request is held whichever replica took it
    one, two = f"long-1-{uuid.uuid4().hex[:8]}", f"long-2-{uuid.uuid4().hex[:8]}"
    key_one = uuid.uuid4().hex
    started = [engine.hold(one), engine.hold(two)]
    with LiveServer(settings(own_redis, shared, **lease), engine) as a, \
            LiveServer(settings(own_redis, shared, **lease), engine) as b, ThreadPoolExecutor(2) as pool:
        try:
            first = pool.submit(post, a.base_url, body(one), key_one)
            second = pool.submit(post, b.base_url, body(two), uuid.uuid4().hex)
            assert all(s.wait(20) for s in started), "the long requests never reached the engine"
            # both slots taken, for 2.5 leases: renewed, they are not freed under the running requests
            end = time.monotonic() + 2.5 * lease_s
            others: list[int] = []
            while time.monotonic() < end:
                for replica in (a, b):
                    others.append(post(replica.base_url, body(f"other-{uuid.uuid4().hex[:6]}")).status_code)
                time.sleep(0.1)
            assert set(others) == {429}, Counter(others)
            engine.go(two)
            assert second.result(timeout=20).status_code == 200
            # one slot free again; the long request's claim, renewed, still refuses its repeats
            end = time.monotonic() + 2.5 * lease_s
            repeats: list[int] = []
            while time.monotonic() < end:
                for replica in (a, b):
                    repeats.append(post(replica.base_url, body(one), key_one).status_code)
                time.sleep(0.1)
            assert set(repeats) == {409} and engine.calls[one] == 1, Counter(repeats)
            engine.go(one)
            assert first.result(timeout=20).status_code == 200
            replay = post(b.base_url, body(one), key_one)
            assert replay.status_code == 200 and replay.headers.get("idempotent-replayed") == "true"
            assert engine.calls[one] == 1
        finally:
            engine.go(one)
            engine.go(two)
