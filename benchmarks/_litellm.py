"""LiteLLM's proxy beside unimodel in the gateway benchmark: its own venv, started offline on loopback.

The venv (``/tmp/unimodel-litellm-venv`` unless ``UNIMODEL_LITELLM_VENV`` says otherwise) is made once with
``pip install 'litellm[proxy]'``; the proxy is started with ``LITELLM_MODE=PRODUCTION`` (no ``.env``
loading) and ``LITELLM_LOCAL_MODEL_COST_MAP=True`` (no fetch of the cost map), one worker, no database, a
master key (it refuses to start without one), and one ``openai/`` model pointing at the scripted upstream.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _processes import Processes, free_port, wait_http

VENV = Path(os.environ.get("UNIMODEL_LITELLM_VENV", "/tmp/unimodel-litellm-venv"))


def ensure_venv() -> Path:
    """The ``litellm`` executable, installing it into its venv first if needed; exits with pip's reason."""
    exe = VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    done = subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "litellm[proxy]"],
                          capture_output=True, text=True)
    if done.returncode != 0 or not exe.exists():
        raise SystemExit(f"litellm could not be installed into {VENV}: {done.stderr.strip()[-600:]}")
    return exe


def version() -> str:
    out = subprocess.run([str(VENV / "bin" / "python"), "-c",
                          "import importlib.metadata as m; print(m.version('litellm'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "?"


def start(started: Processes, upstream: str, model: str, master_key: str) -> str:
    """The LiteLLM proxy in front of ``upstream`` serving ``model`` to callers sending ``master_key``;
    returns its /v1 base URL once it is live."""
    exe = ensure_venv()
    config = Path(tempfile.mkdtemp()) / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {model}\n"
        "    litellm_params:\n"
        f"      model: openai/{model}\n"
        f"      api_base: {upstream}\n"
        "      api_key: sk-none\n"
        "general_settings:\n"
        f"  master_key: {master_key}\n"
    )
    port = free_port()
    env = {**os.environ, "LITELLM_MODE": "PRODUCTION", "LITELLM_LOCAL_MODEL_COST_MAP": "True",
           "LITELLM_LOG": "ERROR", "NO_PROXY": "127.0.0.1,localhost"}
    started.procs.append(subprocess.Popen(
        [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=config.parent))
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", started.procs[-1], timeout=180)
    return f"http://127.0.0.1:{port}/v1"
