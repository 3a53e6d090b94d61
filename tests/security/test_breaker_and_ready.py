"""The circuit breaker opens on the upstream's health, not on one tenant's requests; ``/ready`` tells a load
balancer whether to send traffic (degraded is still ready; SIGTERM drains first) and keeps its details for keys.

* one key whose prompts make the upstream fail (a 500 on a marker, or a first token that never comes in time)
  used to open the shared breaker: every other key got 503 ``circuit_open`` for 30 s. Now a run of failures
  from one caller asks the upstream's health check first, and the circuit stays closed while it passes;
* a real outage still opens it: the health check fails too, or the failures come from several keys;
* a dead primary with a live fallback used to make ``/ready`` 503 although the fallback served every request;
* SIGTERM used to close the port at once: now ``/ready`` says 503 for ``--shutdown-drain-s`` while requests
  are still served and the ones in flight finish (one process, and ``--workers 2``);
* ``/ready``'s details (the breakers, the stores, counts) were open to anyone; now they need a key.
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
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, Optional

import httpx
import pytest

from tests.conftest import ANSWER
from tests.support.live_server import LiveServer, free_port
from tests.support.scripted_upstream import Script, ScriptedUpstream
from tests.support.serve_process import wait_ready
from unimodel.compose import build_engine
from unimodel.config import Settings
from unimodel.engines.breaker import NO_PROBE, CircuitBreaker
from unimodel.server.drain import Drain

MODEL = "m"
K1, K2, K3 = "sk-tenant-one-0001", "sk-tenant-two-0002", "sk-tenant-three-03"
ADMIN = "sk-admin-of-this-server"
POISON = "<<make-the-upstream-fail>>"


# ---- the breaker's rule, on an injected clock ----------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Health:
    """A health check the test answers; counts how often it was asked."""

    def __init__(self, healthy: bool = True) -> None:
        self.healthy = healthy
        self.asked = 0

    async def __call__(self) -> bool:
        self.asked += 1
        await asyncio.sleep(0)
        return self.healthy


def breaker(health: Optional[Health], clock: Clock, min_callers: int = 2, failures: int = 5) -> CircuitBreaker:
    return CircuitBreaker("primary", failures=failures, window_s=30, cooldown_s=10, min_callers=min_callers,
                          health=health, clock=clock)


def fail(b: CircuitBreaker, caller: str, n: int = 1) -> None:
    for _ in range(n):
        permit = b.allow()
        assert permit is not None, "the circuit turned a request away"
        b.failure(permit, caller)


async def settled(b: CircuitBreaker) -> None:
    for _ in range(100):
        if "checking" not in b.snapshot():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the health check never finished")


async def test_one_callers_failures_ask_the_health_check_and_a_healthy_upstream_stays_in_service() -> None:
    health, clock = Health(), Clock()
    b = breaker(health, clock)
    for _ in range(3):  # every run of 5 asks once, and is forgiven
        fail(b, "tenant-a", 5)
        assert b.state == "closed" and b.snapshot()["checking"] is True
        await settled(b)
        assert b.state == "closed" and b.allow() is NO_PROBE
    assert health.asked == 3 and b.opened == 0 and b.snapshot()["forgiven"] == 3


async def test_one_callers_failures_open_it_when_the_health_check_fails_too() -> None:
    health, clock = Health(healthy=False), Clock()
    b = breaker(health, clock)
    fail(b, "tenant-a", 5)
    await settled(b)
    assert b.state == "open" and health.asked == 1


async def test_failures_from_several_callers_open_it_without_asking() -> None:
    health, clock = Health(), Clock()
    b = breaker(health, clock)
    fail(b, "tenant-a", 3)
    fail(b, "tenant-b", 2)
    assert b.state == "open" and health.asked == 0


async def test_a_success_in_between_and_a_check_in_flight_are_respected() -> None:
    health, clock = Health(healthy=False), Clock()
    b = breaker(health, clock)
    fail(b, "tenant-a", 5)
    b.success(NO_PROBE)  # someone else was served while the check ran: the run is over
    await settled(b)
    assert b.state == "closed"
    fail(b, "tenant-a", 1)
    assert health.asked == 1  # one check per run, never more than one in flight


async def test_a_failed_probe_is_judged_by_the_health_check_too() -> None:
    health, clock = Health(healthy=False), Clock()
    b = breaker(health, clock)
    fail(b, "tenant-a", 5)
    await settled(b)
    assert b.state == "open"
    clock.now += 10
    health.healthy = True  # the upstream is back; the probe happens to be the poisoned tenant's request
    probe = b.allow()
    assert probe is not None and probe.probe
    b.failure(probe, "tenant-a")
    assert b.allow() is None  # the probe slot stays taken while the upstream is asked
    await settled(b)
    assert b.state == "closed"
    clock.now += 100
    health.healthy = False  # down again: the next run opens it, and a failed probe re-opens it
    fail(b, "tenant-a", 5)
    await settled(b)
    clock.now += 10
    probe = b.allow()
    assert probe is not None
    b.failure(probe, "tenant-b")
    await settled(b)
    assert b.state == "open" and b.opened == 3


def test_min_callers_1_is_the_plain_breaker_and_no_health_check_opens_nothing_for_one_caller() -> None:
    clock = Clock()
    plain = breaker(None, clock, min_callers=1)
    fail(plain, "tenant-a", 5)
    assert plain.state == "open"
    unchecked = breaker(None, clock)
    fail(unchecked, "tenant-a", 50)
    assert unchecked.state == "closed"
    one = breaker(None, clock, failures=1)  # the caller rule holds below `failures` too
    fail(one, "tenant-a", 3)
    assert one.state == "closed"
    fail(one, "tenant-b")
    assert one.state == "open"


# ---- the breaker in a real gateway --------------------------------------------------------------------------

def poisoned(fail_with: Script) -> Script:
    """The upstream answers every prompt, except one carrying the marker, which fails as ``fail_with`` says."""
    def respond(body: dict[str, Any]) -> Script:
        text = json.dumps(body.get("messages"))
        return fail_with if POISON in text else Script(content=ANSWER)
    return Script(respond=respond)


@contextmanager
def gateway(primary_url: str, wait_ready: bool = True, **settings: Any) -> Iterator[LiveServer]:
    s = Settings(engine="upstream", upstream=primary_url, model=MODEL, upstream_connect_timeout_s=1.0,
                 retry_backoff_s=0.01, **settings)
    with LiveServer(s, build_engine(s), wait_ready=wait_ready) as server:
        yield server


def chat(server: LiveServer, key: str, content: str = "What is 2+2?") -> httpx.Response:
    return httpx.post(server.base_url + "/chat/completions", timeout=30, headers={"Authorization": f"Bearer {key}"},
                      json={"model": MODEL, "messages": [{"role": "user", "content": content}]})


def ready(server: LiveServer, key: Optional[str] = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(server.base_url.removesuffix("/v1") + "/ready", headers=headers, timeout=10)


def primary_breaker(server: LiveServer, key: str) -> dict[str, Any]:
    return dict(ready(server, key).json()["resilience"]["upstreams"]["primary"])


def wait_for(what: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.mark.parametrize("attack", ["a 500 on its prompt", "no first token in time"])
def test_one_keys_failing_requests_do_not_give_another_key_circuit_open(attack: str) -> None:
    fail_with = Script(error_status=500, error_message="scripted crash") if attack.startswith("a 500") \
        else Script(content=ANSWER, delay_s=2.0)
    with ScriptedUpstream({MODEL: poisoned(fail_with)}) as up, \
            gateway(up.base_url, api_keys=[K1, K2], retries=0, first_token_timeout_s=0.5) as server:
        for _ in range(2):  # two runs of the breaker's 5 failures: the circuit opened after the first before
            codes = {chat(server, K1, POISON).status_code for _ in range(5)}
            assert codes == ({502} if attack.startswith("a 500") else {504})
            wait_for(lambda: "checking" not in primary_breaker(server, K1))
            resp = chat(server, K2)
            assert resp.status_code == 200, resp.text  # never 503 circuit_open
            assert resp.json()["choices"][0]["message"]["content"] == ANSWER
        state = primary_breaker(server, K2)
        assert state["breaker"] == "closed" and state["opened"] == 0 and state["forgiven"] >= 1
        assert chat(server, K1).status_code == 200  # the tenant itself is not shut out either


def test_a_real_outage_still_opens_the_breaker() -> None:
    with ScriptedUpstream({MODEL: Script(content=ANSWER)}) as up, \
            gateway(up.base_url, api_keys=[K1, K2, K3], retries=0, breaker_cooldown_s=30) as server:
        # the upstream goes down altogether: its health check fails with the requests, so one key's run opens it
        up.scripts[MODEL] = Script(error_status=503, error_message="engine dead")
        up.models_answer = (503, b'{"error": "down"}')
        assert {chat(server, K1).status_code for _ in range(5)} == {502}
        wait_for(lambda: primary_breaker(server, K1)["breaker"] == "open")
        resp = chat(server, K2)
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "circuit_open"
    with ScriptedUpstream({MODEL: Script(error_status=503, error_message="overloaded")}) as up, \
            gateway(up.base_url, api_keys=[K1, K2, K3], retries=0, breaker_cooldown_s=30) as server:
        # its models list still answers, but every key's requests fail: several callers open it at once
        for key in (K1, K2, K1, K2, K1):
            assert chat(server, key).status_code == 502
        resp = chat(server, K3)
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "circuit_open"
        assert primary_breaker(server, K3)["breaker"] == "open"


# ---- /ready --------------------------------------------------------------------------------------------------

def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: connection refused


def test_a_dead_primary_with_a_live_fallback_is_ready_degraded() -> None:
    with ScriptedUpstream({MODEL: Script(content="from the fallback")}) as fb, \
            gateway(dead_url(), wait_ready=False, fallback_upstreams=[fb.base_url], api_keys=[K1]) as server:
        resp = ready(server)
        assert resp.status_code == 200 and resp.json() == {"status": "degraded"}
        details = ready(server, K1).json()
        assert details["status"] == "degraded" and details["down"] == ["primary"]
        assert details["resilience"]["upstreams"]["fallback-1"]["ready"] is True
        assert chat(server, K1).headers["x-unimodel-upstream"] == "fallback-1"
    with gateway(dead_url(), wait_ready=False, fallback_upstreams=[dead_url()]) as server:
        resp = ready(server)  # nothing can serve: not ready
        assert resp.status_code == 503 and resp.json()["status"] == "not ready"
        assert resp.json()["down"] == ["primary", "fallback-1"]


def test_ready_details_need_a_key() -> None:
    with ScriptedUpstream({MODEL: Script(content=ANSWER)}) as up:
        with gateway(up.base_url, api_keys=[K1]) as server:
            for key in (None, "sk-wrong", ADMIN):
                resp = ready(server, key)
                assert resp.status_code == 200 and resp.json() == {"status": "ready"}
                assert resp.headers["cache-control"] == "no-store"
            details = ready(server, K1).json()
            assert details["status"] == "ready" and details["models"] == [MODEL]
            assert details["resilience"]["upstreams"]["primary"]["breaker"] == "closed"
        with gateway(up.base_url, api_keys=[K1], admin_key=ADMIN) as server:  # the admin key alone, as the dashboard
            assert ready(server, K1).json() == {"status": "ready"}
            assert "resilience" in ready(server, ADMIN).json()
        with gateway(up.base_url) as server:  # no key at all: the details are as open as the API itself
            assert "resilience" in ready(server).json()


async def test_the_drain_hands_sigterm_to_the_server_later_and_a_second_one_at_once() -> None:
    handed: list[float] = []
    loop = asyncio.get_running_loop()
    previous = signal.signal(signal.SIGTERM, lambda sig, frame: handed.append(loop.time()))  # "uvicorn's"
    try:
        drain = Drain()
        assert drain.install() is False  # not armed: the process's signals are left alone
        drain.arm(0.3)
        assert drain.install() is True
        sent = loop.time()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.1)
        assert drain.draining and handed == []  # draining: /ready says 503, the server still serves
        await asyncio.sleep(0.5)
        assert len(handed) == 1 and handed[0] - sent >= 0.3
        os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM goes through at once
        await asyncio.sleep(0.1)
        assert len(handed) == 2
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, previous)


_wait_ready = wait_ready


class ReadyPoller(threading.Thread):
    """Polls ``/ready`` (a new connection each time) until the port is closed or 20 s have passed."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.seen: list[tuple[int, Any]] = []

    def run(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with httpx.Client(timeout=2) as client:
                    resp = client.get(self.url)
                self.seen.append((resp.status_code, resp.json()))
            except httpx.HTTPError:
                if any(code == 503 for code, _ in self.seen):
                    return  # draining is over: the server stopped accepting
            time.sleep(0.05)


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_makes_ready_503_while_requests_in_flight_finish(scripted_upstream: ScriptedUpstream,
                                                                 workers: int) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "unimodel.cli", "serve", "--engine", "upstream", "--upstream",
         scripted_upstream.base_url, "--port", str(port), "--workers", str(workers), "--no-idempotency",
         "--shutdown-drain-s", "1.5", "--shutdown-grace-s", "20", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    poller = ReadyPoller(f"http://127.0.0.1:{port}/ready")
    try:
        _wait_ready(f"http://127.0.0.1:{port}/ready", proc)
        content, done = "", False
        body = {"model": "long", "messages": [{"role": "user", "content": "go"}], "stream": True}
        with ExitStack() as stack:
            r = stack.enter_context(httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
                                                 timeout=30))
            for i, line in enumerate(r.iter_lines()):
                if i == 5:
                    proc.send_signal(signal.SIGTERM)
                    poller.start()
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    for choice in json.loads(line[6:]).get("choices", []):
                        content += choice["delta"].get("content") or ""
        assert done and content == "tok " * 400  # the stream in flight finished
        poller.join(30)
        codes = [code for code, _ in poller.seen]
        assert 503 in codes, poller.seen
        first = codes.index(503)
        assert set(codes[first:]) == {503}  # from the first 503 on, never ready again
        answer = poller.seen[first][1]  # no key configured: the details are open, as the API is
        assert answer["status"] == "not ready" and answer["reason"] == "the server is shutting down"
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
