"""The vLLM supervisor: start (slowly), serve, crash, restart with backoff, stop — with a stand-in vllm."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

from tests.support.live_server import free_port
from unimodel.engines.base import GenerationRequest
from tests.support.requests import gen_request
from unimodel.engines.vllm import VllmEngine, merge_args
from unimodel.errors import ServiceUnavailableError
from unimodel.protocol.events import ContentDelta, Finish, ReasoningDelta
from unimodel.protocol.openai import ChatCompletionRequest

FAKE_VLLM = str(Path(__file__).resolve().parents[2] / "support" / "bin" / "vllm")


def _request() -> GenerationRequest:
    wire = ChatCompletionRequest(model="small4", messages=[{"role": "user", "content": "ping"}])  # type: ignore[list-item]
    return gen_request(completion_id="r1", served_model="small4", wire=wire, max_tokens=None)


def test_merge_args_overrides_planned_flags() -> None:
    planned = ["vllm", "serve", "m", "--max-model-len", "262144", "--enforce-eager", "--tp", "2"]
    merged = merge_args(planned, ["--max-model-len=32768", "--tp", "4", "--kv-cache-dtype", "fp8"])
    assert merged == ["vllm", "serve", "m", "--enforce-eager", "--max-model-len", "32768", "--tp", "4",
                      "--kv-cache-dtype", "fp8"]


async def test_start_crash_restart_stop(tmp_path: Path) -> None:
    port = free_port()
    crash = tmp_path / "crash"
    launches = tmp_path / "launches"
    engine = VllmEngine(
        [FAKE_VLLM, "serve", "mistral-small-4", "--port", str(port), "--served-model-name", "small4"],
        port=port, served_model_name="small4", backoff_initial_s=0.2, stop_grace_s=5,
        env={"FAKE_VLLM_START_DELAY": "1.0", "FAKE_VLLM_CRASH_FILE": str(crash),
             "FAKE_VLLM_LAUNCHES": str(launches)},
    )
    await engine.start()
    try:
        assert not engine.is_ready()
        with pytest.raises(ServiceUnavailableError) as refused:
            async for _ in engine.generate(_request()):
                pass
        assert refused.value.retry_after is not None and refused.value.status_code == 503
        await engine.wait_ready(30)
        events = [e async for e in engine.generate(_request())]
        assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == "hmm"
        assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == "pong"
        assert isinstance(events[-1], Finish)
        first_pid = engine.pid

        crash.touch()  # the child dies
        for _ in range(200):
            if not engine.is_ready():
                break
            await asyncio.sleep(0.05)
        assert not engine.is_ready()
        await engine.wait_ready(30)
        assert engine.restarts == 1 and engine.pid != first_pid
        assert [json.loads(line)[1] for line in launches.read_text().splitlines()] == ["mistral-small-4"] * 2
        again = [e async for e in engine.generate(_request())]
        assert "".join(e.text for e in again if isinstance(e, ContentDelta)) == "pong"
    finally:
        pid = engine.pid
        await engine.aclose()
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
