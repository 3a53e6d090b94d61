"""`unimodel serve --workers N` as real processes: N workers share the port and, through Redis, the limits; with
in-memory limits or idempotency keys N > 1 is refused with one line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from tests.conftest import ANSWER
from tests.support.live_server import free_port
from tests.support.redis_server import RedisServer
from tests.support.scripted_upstream import ScriptedUpstream
from tests.support.serve_process import stop, wait_ready, worker_pids

_wait_ready = wait_ready


def test_two_workers_serve_and_share_the_rate_limit_through_redis(
        scripted_upstream: ScriptedUpstream, redis_server: RedisServer, tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "UNIMODEL_REDIS_PREFIX": f"workers-{uuid.uuid4().hex[:8]}:"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "unimodel.cli", "serve", "--engine", "upstream", "--upstream",
         scripted_upstream.base_url, "--port", str(port), "--workers", "2", "--redis", redis_server.url,
         "--rpm", "6", "--data-dir", str(tmp_path), "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}/ready", proc)
        deadline = time.monotonic() + 30
        while len(worker_pids(proc.pid)) < 2 and time.monotonic() < deadline:  # the second may still be starting
            time.sleep(0.1)
        assert len(worker_pids(proc.pid)) == 2
        statuses = []
        for stream in (False, True) * 4:  # a new connection each: the kernel spreads them over the workers
            body = {"model": "raw-plain", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
            with httpx.Client(timeout=30) as client:
                resp = client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body)
            statuses.append(resp.status_code)
            if resp.status_code == 200 and not stream:
                assert resp.json()["choices"][0]["message"]["content"] == ANSWER
            elif resp.status_code == 200:
                assert resp.text.endswith("data: [DONE]\n\n")
        # 6 a minute in all, whichever worker answered: the limit lives in Redis, not in either process
        assert statuses == [200] * 6 + [429] * 2
    finally:
        stop(proc)


def test_two_workers_with_limits_in_memory_are_refused(scripted_upstream: ScriptedUpstream) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "unimodel.cli", "serve", "--engine", "upstream", "--upstream",
         scripted_upstream.base_url, "--port", str(free_port()), "--workers", "2", "--rpm", "60"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("unimodel: error: --workers 2 needs shared state: rate limits and idempotency keys")
    assert "--redis" in line
