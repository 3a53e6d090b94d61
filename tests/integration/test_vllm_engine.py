"""`--engine vllm` end to end with a stand-in `vllm` on PATH: planned flags, 503 while starting, then served."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.live_server import LiveServer
from unimodel.config import ConfigError, Settings
from unimodel.compose import build_engine

BIN = Path(__file__).resolve().parents[1] / "support" / "bin"


@pytest.fixture()
def fake_vllm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("PATH", f"{BIN}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("FAKE_VLLM_START_DELAY", "1.5")
    launches = tmp_path / "launches"
    monkeypatch.setenv("FAKE_VLLM_LAUNCHES", str(launches))
    return launches


@pytest.fixture()
def server(fake_vllm: Path) -> Iterator[LiveServer]:
    settings = Settings(engine="vllm", vllm_gpu="h200", vllm_gpus=2, max_model_len=262144,
                        served_model_name="mistral-small-4", vllm_args=["--max-num-seqs=64"])
    with LiveServer(settings, build_engine(settings), wait_ready=False) as live:
        yield live


def test_launches_the_planned_command_and_serves_when_healthy(server: LiveServer, fake_vllm: Path) -> None:
    base = server.base_url.removesuffix("/v1")
    assert httpx.get(base + "/health").status_code == 200
    early = httpx.post(server.base_url + "/chat/completions", timeout=10,
                       json={"model": "mistral-small-4", "messages": [{"role": "user", "content": "hi"}]})
    if early.status_code == 503:  # still starting: 503 with Retry-After, never a hang or a 500
        assert int(early.headers["retry-after"]) >= 1
        assert early.json()["error"]["type"] == "service_unavailable"
    deadline = time.monotonic() + 30
    while httpx.get(base + "/ready").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
    resp = client.chat.completions.create(model="mistral-small-4", messages=[{"role": "user", "content": "ping"}])
    assert resp.choices[0].message.content == "pong"
    assert (resp.choices[0].message.model_extra or {}).get("reasoning") == "hmm"
    argv = json.loads(fake_vllm.read_text().splitlines()[0])
    flags = dict(zip(argv, argv[1:]))
    assert argv[1] == "mistralai/Mistral-Small-4-119B-2603"
    assert flags["--tensor-parallel-size"] == "2" and flags["--max-model-len"] == "262144"
    assert flags["--reasoning-parser"] == "mistral" and flags["--tool-call-parser"] == "mistral"
    assert flags["--tokenizer-mode"] == "mistral" and flags["--host"] == "127.0.0.1"
    assert flags["--max-num-seqs"] == "64"  # --vllm-arg overrides the planned value
    assert argv.count("--max-num-seqs") == 1


def test_without_vllm_installed_the_error_says_how(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match=r"unimodel\[vllm\]"):
        build_engine(Settings(engine="vllm", vllm_gpu="h200", vllm_gpus=2))


def test_without_a_gpu_the_error_says_which_flags(fake_vllm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("unimodel.plan.planner.detect_gpus", lambda: None)
    with pytest.raises(ConfigError, match="--vllm-gpu"):
        build_engine(Settings(engine="vllm"))
