"""The simulated vLLM replica (tests/support/sim_vllm.py) behaves as vLLM where the upstream pool looks: prefix
reuse shows in ``cached_tokens`` and the prefix-cache counters, a queue past ``max_num_seqs`` shows in
``/metrics``, the official client streams from it, and its faults do what the pool's tests need."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.sim_vllm import SimVllm
from tests.support.sim_vllm_engine import SimConfig

ROOT = Path(__file__).resolve().parents[3]
SYSTEM = "You are a careful assistant. " * 40  # ~280 tokens of 4 characters
TIMEOUT = aiohttp.ClientTimeout(total=30)


def chat(content: str, max_tokens: int = 4, **extra: Any) -> dict[str, Any]:
    return {"model": "sim-model", "max_tokens": max_tokens, **extra,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]}


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as client:
        yield client


async def post(session: aiohttp.ClientSession, sim: SimVllm, body: dict[str, Any]) -> dict[str, Any]:
    async with session.post(sim.base_url + "/chat/completions", json=body) as response:
        assert response.status == 200, await response.text()
        return await response.json()  # type: ignore[no-any-return]


async def metrics(session: aiohttp.ClientSession, sim: SimVllm) -> dict[str, float]:
    """The unlabelled-by-reason vLLM samples of /metrics (parsed by prometheus_client's own parser)."""
    async with session.get(f"http://127.0.0.1:{sim.port}/metrics") as response:
        text = await response.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("vllm:") and sample.labels.get("model_name") == "sim-model":
                out.setdefault(sample.name, sample.value)
    return out


async def until(check: Any, timeout_s: float = 10.0) -> None:
    async def loop() -> None:
        while not await check():
            await asyncio.sleep(0.02)
    await asyncio.wait_for(loop(), timeout_s)


async def test_a_shared_prefix_is_cached_and_counted(session: aiohttp.ClientSession) -> None:
    async with SimVllm() as sim:
        first = await post(session, sim, chat("What is the capital of France?"))
        second = await post(session, sim, chat("And of Italy?"))
        assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert cached > 200 and cached % 16 == 0  # the system prompt's full blocks
        other = await post(session, sim, {**chat("x"), "messages": [{"role": "user", "content": SYSTEM[::-1]}]})
        assert other["usage"]["prompt_tokens_details"]["cached_tokens"] == 0  # another prefix: no hit
        seen = await metrics(session, sim)
        prompts = sum(r["usage"]["prompt_tokens"] for r in (first, second, other))
        assert seen["vllm:prefix_cache_queries_total"] == prompts
        assert seen["vllm:prefix_cache_hits_total"] == cached
        assert first["choices"][0]["message"]["content"] == "alpha bravo charlie delta"


async def test_the_least_recently_used_prefix_is_evicted(session: aiohttp.ClientSession) -> None:
    async with SimVllm(SimConfig(num_blocks=24)) as sim:  # 384 tokens: one ~300-token prompt at a time
        await post(session, sim, chat("one"))
        await post(session, sim, {**chat("x"), "messages": [{"role": "user", "content": "z" * 1200}]})
        await post(session, sim, {**chat("x"), "messages": [{"role": "user", "content": "y" * 1200}]})
        again = await post(session, sim, chat("one"))
        assert again["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


async def test_requests_past_max_num_seqs_wait_and_show_in_metrics(session: aiohttp.ClientSession) -> None:
    async with SimVllm(SimConfig(max_num_seqs=2, decode_ms=20)) as sim:
        tasks = [asyncio.create_task(post(session, sim, chat(f"q{i}", max_tokens=40))) for i in range(5)]

        async def queued() -> bool:
            seen = await metrics(session, sim)
            return seen["vllm:num_requests_running"] == 2 and seen["vllm:num_requests_waiting"] == 3

        await until(queued)
        assert 0 < (await metrics(session, sim))["vllm:kv_cache_usage_perc"] <= 1
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        seen = await metrics(session, sim)
        assert seen["vllm:num_requests_running"] == 0 and seen["vllm:kv_cache_usage_perc"] == 0
        assert seen["vllm:time_to_first_token_seconds_count"] == 5


async def test_past_max_num_queued_reqs_it_answers_503_as_vllm(session: aiohttp.ClientSession) -> None:
    async with SimVllm(SimConfig(max_num_queued_reqs=1, decode_ms=20)) as sim:
        first = asyncio.create_task(post(session, sim, chat("q", max_tokens=40)))
        await until(lambda: _value(session, sim, "vllm:num_requests_running", 1))
        async with session.post(sim.base_url + "/chat/completions", json=chat("r")) as response:
            assert response.status == 503
            assert (await response.json())["error"]["type"] == "Service Unavailable"
        await asyncio.wait_for(first, 30)


async def test_priority_scheduling_admits_the_lower_value_first(session: aiohttp.ClientSession) -> None:
    async with SimVllm(SimConfig(max_num_seqs=1, scheduling_policy="priority", decode_ms=5)) as sim:
        order: list[str] = []

        async def ask(name: str, priority: int, max_tokens: int = 2) -> None:
            await post(session, sim, chat(name, max_tokens=max_tokens, priority=priority))
            order.append(name)

        blocker = asyncio.create_task(ask("blocker", 0, max_tokens=60))
        await until(lambda: _value(session, sim, "vllm:num_requests_running", 1))
        late = asyncio.create_task(ask("batch", 5))
        await until(lambda: _value(session, sim, "vllm:num_requests_waiting", 1))
        urgent = asyncio.create_task(ask("interactive", 0))
        await until(lambda: _value(session, sim, "vllm:num_requests_waiting", 2))
        await asyncio.wait_for(asyncio.gather(blocker, late, urgent), 30)
        assert order == ["blocker", "interactive", "batch"]


async def _value(session: aiohttp.ClientSession, sim: SimVllm, name: str, value: float) -> bool:
    return (await metrics(session, sim))[name] == value


async def test_the_openai_client_streams_from_it() -> None:
    async with SimVllm() as sim:
        client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="unused", timeout=30, max_retries=0)
        try:
            stream = await client.chat.completions.create(
                model="sim-model", messages=[{"role": "user", "content": "Hello"}], max_tokens=5, stream=True,
                stream_options={"include_usage": True})
            text, usage = "", None
            async for chunk in stream:
                text += "".join(choice.delta.content or "" for choice in chunk.choices)
                usage = chunk.usage or usage
        finally:
            await client.close()
        assert text == "alpha bravo charlie delta echo"
        assert usage is not None and usage.completion_tokens == 5
        assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 0


async def test_faults_refuse_freeze_metrics_and_die_mid_stream(session: aiohttp.ClientSession) -> None:
    async with SimVllm(SimConfig(decode_ms=5)) as sim:
        admin = f"http://127.0.0.1:{sim.port}/admin/faults"
        async with session.post(admin, json={"refuse_status": 503}) as response:
            assert response.status == 200
        async with session.post(sim.base_url + "/chat/completions", json=chat("x")) as response:
            assert response.status == 503 and (await response.json())["error"]["code"] == 503
        sim.set_faults(refuse_status=None, metrics="hang")
        with pytest.raises(asyncio.TimeoutError):
            async with session.get(f"http://127.0.0.1:{sim.port}/metrics", timeout=aiohttp.ClientTimeout(total=0.3)):
                pass
        sim.set_faults(metrics="live", die_after_tokens=3)
        with pytest.raises(aiohttp.ClientPayloadError):  # the stream is cut after its third token
            async with session.post(sim.base_url + "/chat/completions",
                                    json=chat("x", max_tokens=50, stream=True)) as response:
                assert response.status == 200
                async for _ in response.content:
                    pass
        await asyncio.wait_for(sim.dead.wait(), 5)


def test_the_script_prints_its_url_dies_at_fail_after_and_stops_on_sigterm() -> None:
    import httpx

    procs: list[subprocess.Popen[str]] = []

    def start(*flags: str) -> tuple[subprocess.Popen[str], str]:
        proc = subprocess.Popen([sys.executable, str(ROOT / "tests/support/sim_vllm.py"), "--port", "0",
                                 "--decode-ms", "2", *flags], stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the ready line (empty if the process ends first)
        assert line.startswith("sim-vllm ready http://127.0.0.1:"), line
        return proc, line.split()[-1]

    try:
        proc, url = start()
        assert httpx.get(url + "/models", timeout=10).json()["data"][0]["max_model_len"] == 32768
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        proc, url = start("--fail-after", "2")
        with pytest.raises(httpx.HTTPError):
            with httpx.stream("POST", url + "/chat/completions", json=chat("x", max_tokens=20, stream=True),
                              timeout=10) as response:
                for _ in response.iter_lines():
                    pass
        assert proc.wait(timeout=20) == 3
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
