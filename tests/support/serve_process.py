"""Helpers for tests that run ``unimodel serve`` as a subprocess."""

from __future__ import annotations

import subprocess
import time

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
