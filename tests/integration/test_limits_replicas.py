"""Rate limits end to end: two real `unimodel serve` processes sharing one Redis hold ``--rpm 4`` exactly across
both, keep serving (fail open, logged once) while Redis is down and enforce again when it is back; and the
official openai client, which reads ``Retry-After`` and retries a 429, ends up served."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.live_server import LiveServer, free_port
from tests.support.redis_server import RedisServer
from tests.support.scripted_upstream import ScriptedUpstream
from unimodel.config import Settings
from unimodel.compose import build_engine

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

BODY = {"model": "raw-plain", "messages": [{"role": "user", "content": "What is 2+2?"}]}


class Replica:
    """`python -m unimodel.cli serve` on a free port, its stderr in a file."""

    def __init__(self, upstream: str, redis_url: str, prefix: str, log: Path, *flags: str) -> None:
        self.port = free_port()
        self.log = log
        env = {**os.environ, "UNIMODEL_REDIS_PREFIX": prefix}
        self.stderr = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unimodel.cli", "serve", "--engine", "upstream", "--upstream", upstream,
             "--port", str(self.port), "--redis", redis_url, "--log-level", "warning", *flags],
            stdout=subprocess.DEVNULL, stderr=self.stderr, env=env)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"unimodel serve exited early: {self.log.read_text()[-2000:]}"
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("unimodel serve did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


@pytest.fixture()
def own_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def burst(urls: list[str], n: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=30) as client:
        return list(await asyncio.gather(*(client.post(urls[i % len(urls)] + "/v1/chat/completions", json=BODY)
                                           for i in range(n))))


def test_two_processes_sharing_redis_hold_rpm_4_exactly_and_survive_its_outage(
        scripted_upstream: ScriptedUpstream, own_redis: RedisServer, tmp_path: Path) -> None:
    prefix = f"it-{uuid.uuid4().hex[:8]}:"
    replicas = [Replica(scripted_upstream.base_url, own_redis.url, prefix, tmp_path / f"replica{i}.log", "--rpm", "4")
                for i in range(2)]
    try:
        deadline = time.monotonic() + 90
        for r in replicas:
            r.wait_ready(deadline)
        urls = [r.url for r in replicas]

        answers = asyncio.run(burst(urls, 16))
        statuses = [a.status_code for a in answers]
        assert statuses.count(200) == 4 and statuses.count(429) == 12, statuses
        for a in answers:
            assert a.headers["x-ratelimit-limit-requests"] == "4"
            if a.status_code == 429:
                assert a.json()["error"]["code"] == "rate_limit_exceeded"
                assert 1 <= int(a.headers["retry-after"]) <= 15
                assert a.headers["x-ratelimit-remaining-requests"] == "0"
        assert sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in answers if a.status_code == 200) \
            == [0, 1, 2, 3]

        own_redis.stop()  # Redis goes away: both replicas keep serving (the default: fail open)
        down = asyncio.run(burst(urls, 8))
        assert [a.status_code for a in down] == [200] * 8
        ready = httpx.get(urls[0] + "/ready", timeout=5).json()["limits"]
        assert ready["redis"] == "down" and ready["admitted_unchecked"] >= 1

        own_redis.start()  # back (empty): limits hold again, exactly, after the reconnect backoff
        time.sleep(1.2)
        again = asyncio.run(burst(urls, 10))
        assert [a.status_code for a in again].count(200) == 4
        assert httpx.get(urls[1] + "/ready", timeout=5).json()["limits"]["redis"] == "up"
    finally:
        for r in replicas:
            r.stop()
    for r in replicas:
        log = r.log.read_text()
        assert log.count("does not answer for rate limits") <= 1  # logged once per outage, per process
        assert "Traceback" not in log


@pytest.fixture()
def limited_gateway(scripted_upstream: ScriptedUpstream) -> Iterator[LiveServer]:
    settings = Settings(engine="upstream", upstream=scripted_upstream.base_url, upstream_connect_timeout_s=1.0,
                        rpm=2, rate_limit_window_s=1.0)
    with LiveServer(settings, build_engine(settings)) as server:
        yield server


def test_the_openai_client_retries_a_429_after_retry_after_and_is_served(limited_gateway: LiveServer) -> None:
    strict = openai.OpenAI(base_url=limited_gateway.base_url, api_key="unused", max_retries=0, timeout=20)
    seen: list[int] = []
    patient = openai.OpenAI(base_url=limited_gateway.base_url, api_key="unused", max_retries=4, timeout=20,
                            http_client=httpx.Client(event_hooks={"response": [lambda r: seen.append(r.status_code)]}))
    raw = strict.chat.completions.with_raw_response.create(model="raw-plain", messages=BODY["messages"])
    assert raw.headers["x-ratelimit-limit-requests"] == "2" and raw.headers["x-ratelimit-remaining-requests"] == "1"
    strict.chat.completions.create(model="raw-plain", messages=BODY["messages"])
    with pytest.raises(openai.RateLimitError) as refused:
        strict.chat.completions.create(model="raw-plain", messages=BODY["messages"])
    assert refused.value.code == "rate_limit_exceeded"
    assert int(refused.value.response.headers["retry-after-ms"]) <= 500  # one request back every 0.5 s
    served = [patient.chat.completions.create(model="raw-plain", messages=BODY["messages"]) for _ in range(5)]
    assert all(s.choices[0].message.content for s in served)
    assert 429 in seen and seen.count(200) == 5  # refused on the way, waited as told, and served every time
    patient.close()
    strict.close()
