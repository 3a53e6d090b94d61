"""``/ready`` tells what the server is doing (issue 24): a model load's phase while it loads, vLLM starting, and
the real state of Redis.

* While the local engine loads (a real ``LocalEngine`` serving ``tiny-scripted``, a Mistral-native checkpoint,
  held by the test between two of its phases), ``/ready`` is 503 and its reason says "the model is loading
  (phase …)" to everyone; the operator's key also gets ``loading`` with the phase, the elapsed time and the
  shards done; then it is 200 and the log has a few lines naming every phase and the total.
* ``--engine vllm`` (the stand-in ``vllm`` on PATH, slow to start): the 503 says "vLLM is starting".
* Redis stopped mid-test (a real redis-server), with no request sent meanwhile: ``/ready`` says ``degraded``,
  the limits' and idempotency's sections say ``redis: down``, and the details say what that means for requests
  (``--limits-on-redis-failure``); Redis started again: ``ready`` and ``up``. Before, ``/ready`` showed Redis up
  for as long as no request failed on it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

from tests.support.fake_engine import InMemoryEngine
from tests.support.live_server import LiveServer
from tests.support.redis_server import RedisServer
from unimodel.compose import build_engine
from unimodel.config import Settings
from unimodel.engines.base import GenerationRequest
from unimodel.engines.local.engine import LocalEngine
from unimodel.engines.local.load_progress import LoadProgress
from unimodel.protocol.events import Event, Finish

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ADMIN = "sk-admin-of-this-server-0001"
KEY = "sk-a-user-key-of-this-server"
BIN = Path(__file__).resolve().parents[1] / "support" / "bin"


class Idle(InMemoryEngine):
    """Serves ``m``; these tests send it no request."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        yield Finish("stop")


def until(probe: Callable[[], Any], done: Callable[[Any], bool], within_s: float = 30.0) -> Any:
    """``probe()`` until ``done(result)``; the last result (the test's assertion then says what it was)."""
    deadline = time.monotonic() + within_s
    while True:
        result = probe()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.05)


def ready(server: LiveServer, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(server.base_url.removesuffix("/v1") + "/ready", headers=headers, timeout=10)


# ---- a model loading ----------------------------------------------------------------------------------------

class HeldLoad(LocalEngine):
    """A real local engine whose load waits, once it has read its weights, until the test lets it go on."""

    def __init__(self, model: str) -> None:
        super().__init__(model, device="cpu", dtype="float32")
        self.held = threading.Event()
        self.go = threading.Event()

    async def _start(self, progress: LoadProgress) -> None:
        original = progress.phase

        def phase(name: str, detail: str = "", total: int | None = None) -> None:
            original(name, detail, total)
            if name == "convert":  # the weights are read (1 of 1 shards): hold here, in the loader's thread
                self.held.set()
                self.go.wait(60)

        progress.phase = phase  # type: ignore[method-assign]
        await super()._start(progress)


@pytest.fixture()
def loading(tiny_cache_dir: Path, caplog: pytest.LogCaptureFixture) -> Iterator[tuple[LiveServer, HeldLoad]]:
    caplog.set_level(logging.INFO, logger="unimodel.local")  # before the load starts: every line of it
    engine = HeldLoad("tiny-scripted")
    engine.cache_dir = tiny_cache_dir
    settings = Settings(model="tiny-scripted", api_keys=[KEY], admin_key=ADMIN)
    try:
        with LiveServer(settings, engine, wait_ready=False) as server:
            yield server, engine
    finally:
        engine.go.set()


def test_ready_says_the_model_is_loading_and_in_which_phase(loading: tuple[LiveServer, HeldLoad],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    server, engine = loading
    assert engine.held.wait(120), "the load never reached the conversion"
    anyone = ready(server)
    assert anyone.status_code == 503 and anyone.headers["retry-after"] == "2"
    assert anyone.json() == {"status": "not ready", "reason": "the model is loading (phase convert)"}
    user = ready(server, KEY)  # a key, but not the operator's: the same as anyone
    assert user.json() == anyone.json()
    operator = ready(server, ADMIN).json()
    assert operator["status"] == "not ready" and operator["reason"] == "the model is loading (phase convert)"
    assert operator["loading"]["phase"] == "convert" and operator["loading"]["elapsed_s"] >= 0
    assert operator["down"] == ["primary"]

    engine.go.set()
    done = until(lambda: ready(server), lambda r: r.status_code == 200, within_s=120)
    assert done.status_code == 200 and done.json() == {"status": "ready"}
    assert "loading" not in ready(server, ADMIN).json()

    records = [*caplog.get_records("setup"), *caplog.records]  # the load started as the server did
    lines = [r.getMessage() for r in records if r.name == "unimodel.local" and r.levelno == logging.INFO]
    text = "\n".join(lines)
    for phase in ("resolve", "tokenizer", "weights", "convert", "device", "warm-up"):
        assert f"loading tiny-scripted: {phase}" in text, text
    assert "Mistral's native format" in text and " MB in 1 weight file" in text  # where from, how big
    assert "from the cache" in text
    assert any(line.startswith("loaded tiny-scripted in ") and "convert " in line for line in lines), text
    assert len(lines) <= 12, text  # a few lines per load, never one per tensor


def test_the_reason_counts_shards_while_weights_load() -> None:
    progress = LoadProgress("m")
    progress.phase("weights", total=8)
    progress.step(3, 8)
    snap = progress.snapshot()
    assert snap.reason() == "the model is loading (phase weights, 3 of 8)"
    assert snap.as_dict()["done"] == 3 and snap.as_dict()["total"] == 8
    progress.phase("device")
    assert "done" not in progress.snapshot().as_dict()


# ---- vLLM starting --------------------------------------------------------------------------------------------

def test_ready_says_vllm_is_starting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", f"{BIN}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_VLLM_START_DELAY", "4")
    monkeypatch.setenv("FAKE_VLLM_LAUNCHES", str(tmp_path / "launches"))
    settings = Settings(engine="vllm", vllm_gpu="h200", vllm_gpus=2, max_model_len=262144,
                        served_model_name="mistral-small-4", admin_key=ADMIN)
    with LiveServer(settings, build_engine(settings), wait_ready=False) as server:
        early = ready(server)
        assert early.status_code == 503
        assert early.json()["reason"].startswith("vLLM is starting (phase ")
        details = ready(server, ADMIN).json()
        assert details["loading"]["phase"] in ("launching", "starting") and details["engine"] == "vllm"
        served = until(lambda: ready(server), lambda r: r.status_code == 200)
        assert served.json() == {"status": "ready"}


# ---- Redis -----------------------------------------------------------------------------------------------------

@pytest.fixture()
def own_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.mark.parametrize("on_failure", ["open", "closed"])
def test_ready_tells_redis_real_state(own_redis: RedisServer, on_failure: str) -> None:
    settings = Settings(engine="upstream", upstream="http://127.0.0.1:9/v1", api_keys=[KEY], admin_key=ADMIN,
                        redis=own_redis.url, redis_prefix=f"rp{on_failure}:", rpm=100,
                        limits_on_redis_failure=on_failure)
    with LiveServer(settings, Idle()) as server:
        up = ready(server, ADMIN).json()
        assert up["status"] == "ready" and "degraded" not in up
        assert up["limits"]["redis"] == "up" and up["idempotency"]["redis"] == "up"

        own_redis.stop()  # no request is sent: only /ready's own look can tell
        down = until(lambda: ready(server, ADMIN).json(), lambda b: b["status"] == "degraded", within_s=15)
        assert down["status"] == "degraded", down
        assert down["limits"]["redis"] == "down" and down["idempotency"]["redis"] == "down"
        assert down["limits"]["redis_error"]
        limits_line = next(line for line in down["degraded"] if "limits-on-redis-failure" in line)
        assert f"--limits-on-redis-failure {on_failure}" in limits_line
        assert any("Idempotency-Key is not honoured" in line for line in down["degraded"])
        anyone = ready(server)  # still serving: 200 for the load balancer, the details for the operator
        assert anyone.status_code == 200 and anyone.json() == {"status": "degraded"}

        own_redis.start()
        back = until(lambda: ready(server, ADMIN).json(), lambda b: b["status"] == "ready", within_s=15)
        assert back["status"] == "ready" and back["limits"]["redis"] == "up", back
        assert back["idempotency"]["redis"] == "up"


def test_a_paused_redis_does_not_hold_ready_up(own_redis: RedisServer) -> None:
    settings = Settings(engine="upstream", upstream="http://127.0.0.1:9/v1", admin_key=ADMIN, api_keys=[KEY],
                        redis=own_redis.url, redis_prefix="rpause:", rpm=100, limits_redis_timeout_s=5.0)
    with LiveServer(settings, Idle()) as server:
        assert ready(server, ADMIN).json()["status"] == "ready"
        own_redis.pause()  # connections stay open and nothing answers
        try:
            down = until(lambda: ready(server, ADMIN).json(), lambda b: b["status"] == "degraded", within_s=15)
            assert down["limits"]["redis"] == "down" and down["limits"]["redis_error"] == "TimeoutError", down
        finally:
            own_redis.resume()
