"""`unimodel serve` as a real process: it starts from the CLI and drains in-flight streams on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import httpx

from tests.support.live_server import free_port
from tests.support.scripted_upstream import ScriptedUpstream
from tests.support.serve_process import wait_ready


_wait_ready = wait_ready


def test_sigterm_lets_inflight_stream_finish(scripted_upstream: ScriptedUpstream) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "unimodel.cli", "serve", "--engine", "upstream", "--upstream",
         scripted_upstream.base_url, "--port", str(port), "--shutdown-grace-s", "20", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}/ready", proc)
        content = ""
        done = False
        body = {"model": "long", "messages": [{"role": "user", "content": "go"}], "stream": True}
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=30) as r:
            for i, line in enumerate(r.iter_lines()):
                if i == 5:
                    proc.send_signal(signal.SIGTERM)
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    for choice in json.loads(line[6:]).get("choices", []):
                        content += choice["delta"].get("content") or ""
        assert done and content == "tok " * 400
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after draining
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_model_that_does_not_load_stops_the_server_with_its_reason(tmp_path: object) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "unimodel.cli", "serve", "--model", "/nonexistent/checkpoint", "--port",
         str(free_port())], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("unimodel: error: the engine did not start:")
    assert "--model PATH" in last and "--engine upstream" in last
