"""Helpers for tests that run ``unimodel serve`` as a subprocess."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx


def wait_ready(url: str, proc: "subprocess.Popen[bytes]", timeout_s: float = 60.0,
               what: str = "unimodel serve") -> None:
    """Poll ``url`` until it answers 200; fail if the process exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what} exited early (code {proc.returncode})"
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what} did not become ready in {timeout_s:.0f}s")


def worker_pids(pid: int) -> list[int]:
    """The worker processes uvicorn spawned under ``pid`` (not multiprocessing's resource tracker)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if ppid == pid and b"spawn_main" in cmdline:
            out.append(int(stat.parent.name))
    return out


def stop(proc: "subprocess.Popen[bytes]", timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL when it has not ended within ``timeout_s``; always waited for."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
