"""``unimodel serve --engine vllm`` against real vLLM: it launches vLLM with the plan's CPU command, waits for
it, serves through it, answers 503 + Retry-After while vLLM is down, restarts it after a SIGKILL, and leaves no
process behind when it stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.live_server import free_port
from tests.support.vllm_server import START_TIMEOUT_S, require_vllm
from unimodel.models.scripted import script

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
SERVED = "tiny-scripted"


def _processes() -> Iterator[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every live process, from /proc (zombies left out)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, ppid, pgid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError):
                continue  # gone meanwhile
            if state != "Z":
                yield int(entry.name), int(ppid), int(pgid)


def _vllm_child(serve_pid: int) -> int:
    for pid, ppid, _ in _processes():
        try:
            if ppid == serve_pid and b"vllm.entrypoints" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            pass
    raise AssertionError("no vLLM child")


def _group_alive(pgid: int) -> list[int]:
    return [pid for pid, _, group in _processes() if group == pgid]


def _chat(base: str) -> httpx.Response:
    return httpx.post(base + "/chat/completions", timeout=60, json={
        "model": SERVED, "temperature": 0, "messages": [{"role": "user", "content": script("think").prompt}]})


def _wait_answer(base: str, proc: "subprocess.Popen[bytes]", timeout_s: float) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "unimodel serve exited"
        try:
            resp = _chat(base)
            if resp.status_code == 200:
                return resp
            assert resp.status_code == 503, resp.text  # starting: nothing else is acceptable
            assert resp.headers.get("retry-after"), resp.headers
        except httpx.TransportError:
            pass  # the gateway itself is still starting
        time.sleep(1.0)
    raise AssertionError(f"no answer in {timeout_s:.0f}s")


def test_serve_launches_supervises_and_restarts_real_vllm(tiny_cache_dir: Path, tmp_path: Path) -> None:
    python = require_vllm()
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "unimodel.cli", "serve", "--engine", "vllm", "--model", SERVED,
             "--cache-dir", str(tiny_cache_dir), "--vllm-gpu", "cpu", "--max-model-len", "1024",
             "--vllm-command", f"{python} -m vllm.entrypoints.openai.api_server", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    pgids: set[int] = set()
    try:
        first = _wait_answer(base, proc, START_TIMEOUT_S)
        assert httpx.get(base.removesuffix("/v1") + "/ready", timeout=10).status_code == 200
        message = first.json()["choices"][0]["message"]
        assert (message["reasoning"], message["content"]) == ("Let me think about it.", "Sunny and mild today")
        child = _vllm_child(proc.pid)
        child_group = os.getpgid(child)
        pgids.add(child_group)

        os.kill(child, signal.SIGKILL)  # vLLM's API server dies; its workers are the supervisor's to clean up
        deadline = time.monotonic() + 60
        while True:  # meanwhile: 503 with Retry-After, never a hang or a 5xx of another kind
            resp = _chat(base)
            if resp.status_code == 503:
                assert resp.headers.get("retry-after"), resp.headers
                assert resp.json()["error"]["type"] == "service_unavailable"
                assert httpx.get(base.removesuffix("/v1") + "/ready", timeout=10).status_code == 503
                break
            assert time.monotonic() < deadline, f"no 503 after vLLM died: {resp.status_code} {resp.text}"
            time.sleep(0.2)
        again = _wait_answer(base, proc, START_TIMEOUT_S)
        assert again.json()["choices"][0]["message"]["content"] == "Sunny and mild today"
        restarted = _vllm_child(proc.pid)
        assert restarted != child
        pgids.add(os.getpgid(restarted))
        assert not _group_alive(child_group), "the killed vLLM's workers outlived it"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("unimodel serve did not stop on SIGTERM") from None
        full = log.read_text(errors="replace")
        tail = full[-3000:]
    assert code in (0, -signal.SIGTERM), tail  # uvicorn re-raises the signal after draining
    deadline = time.monotonic() + 30
    while any(_group_alive(g) for g in pgids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(_group_alive(g) for g in pgids), f"vLLM processes left behind:\n{tail}"
    assert "restarting vLLM" in full
