"""The pool over two real vLLM 0.32 (CPU) replicas: it reads their real ``/metrics`` (vLLM's own names, its
histograms skipped), sends requests to both, keeps a conversation on one, counts tokens through one, and
drains one."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.support.live_server import LiveServer
from tests.support.vllm_server import SERVED_NAME, VllmServers
from unimodel.compose import build_engine
from unimodel.config import Settings
from unimodel.engines.pool.load import parse_vllm_metrics

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(300)]


def test_vllms_own_metrics_page_reads(vllm_servers: VllmServers) -> None:
    for server in (vllm_servers.parsed, vllm_servers.raw):
        root = server.base_url.rstrip("/").removesuffix("/v1")
        page = httpx.get(root + "/metrics", timeout=30).content
        load = parse_vllm_metrics(page, at=0.0)
        assert load.waiting is not None and load.running is not None and load.kv_usage is not None, page[:400]
        assert 0.0 <= load.kv_usage <= 1.0


@pytest.fixture(scope="module")
def pool_server(vllm_servers: VllmServers) -> Iterator[LiveServer]:
    settings = Settings(engine="upstream", model=SERVED_NAME,
                        upstream=[vllm_servers.parsed.base_url, vllm_servers.raw.base_url],
                        pool_scrape_interval_s=0.5)
    with LiveServer(settings, build_engine(settings)) as server:
        yield server


def test_a_pool_of_two_real_vllms(pool_server: LiveServer) -> None:
    root = pool_server.base_url.removesuffix("/v1")
    with openai.OpenAI(base_url=pool_server.base_url, api_key="none", max_retries=0, timeout=120) as client, \
            httpx.Client(base_url=root, timeout=60) as http:
        replicas = http.get("/admin/pool").json()["replicas"]
        assert len(replicas) == 2
        assert all(r["metrics"] == "fresh" and r["kv_usage"] is not None for r in replicas.values()), replicas
        for i in range(8):
            out = client.chat.completions.create(
                model=SERVED_NAME, max_tokens=8, reasoning_effort="none",  # type: ignore[arg-type]
                messages=[{"role": "user", "content": f"Say hello number {i} to everyone here."}])
            assert out.choices[0].finish_reason in ("stop", "length")
        served = {n: r["served"] for n, r in http.get("/admin/pool").json()["replicas"].items()}
        assert all(v > 0 for v in served.values()), served

        # a conversation stays on the replica that has its prefix
        history = [{"role": "system", "content": "You are a careful assistant. " * 30},
                   {"role": "user", "content": "What is the weather in Paris?"}]
        before = served
        for turn in range(3):
            out = client.chat.completions.create(model=SERVED_NAME, max_tokens=8, messages=history,
                                                 reasoning_effort="none")  # type: ignore[arg-type]
            history += [{"role": "assistant", "content": out.choices[0].message.content or "ok"},
                        {"role": "user", "content": f"And on day {turn}?"}]
        after = {n: r["served"] for n, r in http.get("/admin/pool").json()["replicas"].items()}
        assert sorted(after[n] - before[n] for n in after) == [0, 3], (before, after)

        # token counting goes through a replica's /tokenize
        counted = http.post("/tokenize", json={"model": SERVED_NAME, "messages": history[:2]})
        assert counted.status_code == 200 and counted.json()["count"] > 30

        # a drained replica gets nothing new
        name = next(iter(after))
        assert http.post(f"/admin/pool/replicas/{name}/drain").json()["state"] == "draining"
        for i in range(3):
            client.chat.completions.create(model=SERVED_NAME, max_tokens=4, reasoning_effort="none",  # type: ignore[arg-type]
                                           messages=[{"role": "user", "content": f"drained {i}"}])
        final = http.get("/admin/pool").json()["replicas"]
        assert final[name]["served"] == after[name]
        metrics = http.get("/metrics").text
        assert "unimodel_pool_replica_kv_usage{" in metrics
