"""Start the processes a benchmark measures (scripted upstream, `unimodel serve`) on 127.0.0.1, and stop them."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(xs: list[float], p: int) -> float:
    return statistics.quantiles(xs, n=100, method="inclusive")[p - 1] if len(xs) > 1 else xs[0]


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the process serving {url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up in {timeout:.0f}s")


class Processes:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def scripted_upstream(self) -> str:
        """The scripted vLLM stand-in (tests/support); returns its /v1 base URL."""
        port_file = Path(tempfile.mkdtemp()) / "upstream"
        self.procs.append(subprocess.Popen([sys.executable, "-m", "tests.support.scripted_upstream",
                                            str(port_file)], cwd=ROOT, env=ENV))
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        url = port_file.read_text().strip()
        wait_http(url + "/models", self.procs[-1])
        return url

    def redis(self) -> str:
        """A throwaway redis-server on a free loopback port (no persistence); returns its URL."""
        port = free_port()
        self.procs.append(subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                            "--save", "", "--appendonly", "no"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return f"redis://127.0.0.1:{port}/0"
            except OSError:
                time.sleep(0.05)
        raise SystemExit("redis-server did not start")

    def unimodel(self, *flags: str) -> str:
        """`unimodel serve FLAGS` on a free port, once /ready; returns its /v1 base URL."""
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "unimodel.cli", "serve", "--port", str(port),
                                 "--log-level", "warning", *flags], cwd=ROOT, env=ENV)
        self.procs.append(proc)
        wait_http(f"http://127.0.0.1:{port}/ready", proc)
        return f"http://127.0.0.1:{port}/v1"


@contextmanager
def processes() -> Iterator[Processes]:
    started = Processes()
    try:
        yield started
    finally:
        for p in started.procs:
            p.terminate()
        for p in started.procs:
            p.wait(timeout=30)
