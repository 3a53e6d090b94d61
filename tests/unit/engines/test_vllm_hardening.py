"""The vLLM supervisor under stress: endless log lines, a failing supervisor, and a gateway killed outright."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Optional

import pytest

from tests.support.live_server import free_port
from tests.support.requests import gen_request
from unimodel.engines.base import GenerationRequest
from unimodel.engines.vllm import LineSplitter, VllmEngine
from unimodel.protocol.events import ContentDelta

ROOT = Path(__file__).resolve().parents[3]
FAKE_VLLM = str(ROOT / "tests" / "support" / "bin" / "vllm")


def _request() -> GenerationRequest:
    return gen_request("r1", "small4", {"model": "small4", "messages": [{"role": "user", "content": "ping"}]})


def _engine(tmp_path: Path, health_check: Optional[Callable[[], Awaitable[bool]]] = None, **env: str) -> VllmEngine:
    port = free_port()
    return VllmEngine([FAKE_VLLM, "serve", "mistral-small-4", "--port", str(port), "--served-model-name", "small4"],
                      port=port, served_model_name="small4", backoff_initial_s=0.2, stop_grace_s=5,
                      env={"FAKE_VLLM_START_DELAY": "0.2", "FAKE_VLLM_LAUNCHES": str(tmp_path / "launches"), **env},
                      health_check=health_check)


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as gone: it holds no memory and serves nothing)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


# ---- log lines -------------------------------------------------------------------------------------------

def test_line_splitter_cuts_long_lines_and_keeps_memory_bounded() -> None:
    lines = LineSplitter(limit=12)
    assert lines.feed(b"short\nab") == ["short"]
    assert lines.feed(b"cd\r\n\n") == ["abcd"]  # split across chunks; \r\n and blank lines are no extra lines
    out: list[str] = []
    for _ in range(1000):
        out += lines.feed(b"x" * 1000)
        assert len(lines._head) <= 12
    out += lines.feed(b"yy\nprogress 1%\rprogress 2%\rtail")
    assert out == ["x" * 12 + " ... [line cut: 999990 more bytes]", "progress 1%", "progress 2%"]
    assert lines.flush() == ["tail"] and lines.flush() == []
    assert LineSplitter(limit=4).feed("é€".encode() + b"\n") == ["é\ufffd ... [line cut: 1 more bytes]"]


async def test_a_200k_log_line_never_blocks_vllm(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="unimodel.vllm")
    # a 200 KiB line, then 512 KiB of ordinary lines: more than a pipe holds, so a reader that gave up on the
    # long line would leave the fake vllm blocked on a write, never serving
    engine = _engine(tmp_path, FAKE_VLLM_LONG_LINE=str(200 * 1024), FAKE_VLLM_CHATTER=str(512 * 1024))
    await engine.start()
    try:
        await engine.wait_ready(60)
        events = [e async for e in engine.generate(_request())]
        assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == "pong"
        records = [r.getMessage() for r in caplog.records if r.name == "unimodel.vllm"]
        cut = [m for m in records if "line cut" in m]
        assert len(cut) == 1 and f"{200 * 1024 - 16384} more bytes" in cut[0] and len(cut[0]) < 17000
        assert any("done chattering" in m for m in records)
        assert any("fake vllm serving" in m for m in records)
    finally:
        await engine.aclose()


# ---- the watchdog ------------------------------------------------------------------------------------------

async def test_a_failing_supervisor_is_logged_and_restarted(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    failures = 0

    async def healthy_then_failing_once() -> bool:
        nonlocal failures
        ok = await engine.probe_health()
        if ok and failures == 0:  # a bug in supervision, with vLLM up and healthy
            failures += 1
            raise RuntimeError("injected supervisor failure")
        return ok

    engine = _engine(tmp_path, healthy_then_failing_once, FAKE_VLLM_CRASH_FILE=str(tmp_path / "crash"))
    await engine.start()
    try:
        deadline = time.monotonic() + 30
        while engine.supervisor_failures == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert engine.supervisor_failures == 1
        first_pid = engine.pid
        await engine.wait_ready(30)
        assert engine.pid == first_pid and engine.restarts == 0  # the running vLLM was adopted, not restarted
        assert len((tmp_path / "launches").read_text().splitlines()) == 1
        assert "the vLLM supervisor failed" in caplog.text and "injected supervisor failure" in caplog.text
        assert engine._supervisor is not None and not engine._supervisor.done()
        events = [e async for e in engine.generate(_request())]
        assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == "pong"

        (tmp_path / "crash").touch()  # supervision still works after the failure: a crash is restarted
        deadline = time.monotonic() + 30
        while engine.restarts == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await engine.wait_ready(30)
        assert engine.restarts == 1 and engine.pid != first_pid and first_pid is not None and not _alive(first_pid)
    finally:
        pid = engine.pid
        await engine.aclose()
    assert pid is not None and not _alive(pid)


# ---- no orphans --------------------------------------------------------------------------------------------

GATEWAY = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, {root!r})
    from unimodel.engines.vllm import VllmEngine

    async def main():
        port = {port}
        engine = VllmEngine([{fake!r}, "serve", "m", "--port", str(port), "--served-model-name", "small4"],
                            port=port, served_model_name="small4", env={{"FAKE_VLLM_START_DELAY": "0.2"}})
        await engine.start()
        await engine.wait_ready(60)
        print(engine.pid, flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
""")


def test_vllm_dies_with_a_sigkilled_gateway(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux only")
    script = tmp_path / "gateway.py"
    script.write_text(GATEWAY.format(root=str(ROOT), port=free_port(), fake=FAKE_VLLM))
    gateway = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    child = None
    try:
        assert gateway.stdout is not None
        ready, _, _ = select.select([gateway.stdout], [], [], 60)
        assert ready, "the gateway-like process did not report its vLLM in time"
        child = int(gateway.stdout.readline())
        assert _alive(child)
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(timeout=10)
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "vLLM outlived the gateway that launched it"
    finally:
        if gateway.poll() is None:
            gateway.kill()
            gateway.wait(timeout=10)
        if gateway.stdout is not None:
            gateway.stdout.close()
        if child is not None and _alive(child):
            os.kill(child, signal.SIGKILL)
