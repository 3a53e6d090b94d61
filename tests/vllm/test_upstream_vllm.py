"""What unimodel reads from real vLLM behind the upstream engine: readiness, errors (a prompt over the context,
a bad request) in the OpenAI shape with the right status, and the names of vLLM's own metrics."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.live_server import LiveServer
from tests.support.vllm_server import SERVED_NAME, VllmServers
from unimodel.compose import build_engine
from unimodel.config import Settings

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def front(vllm_servers: VllmServers) -> Iterator[str]:
    settings = Settings(engine="upstream", upstream=vllm_servers.parsed.base_url)
    with LiveServer(settings, build_engine(settings)) as server:
        yield server.base_url


def test_ready_and_models_come_from_vllm(front: str) -> None:
    root = front.removesuffix("/v1")
    assert httpx.get(root + "/ready", timeout=10).status_code == 200
    models = httpx.get(front + "/models", timeout=10).json()
    assert SERVED_NAME in [m["id"] for m in models["data"]]


def test_a_prompt_over_the_context_is_context_length_exceeded(front: str, vllm_servers: VllmServers) -> None:
    body = {"model": SERVED_NAME, "messages": [{"role": "user", "content": "word " * 1500}]}
    direct = httpx.post(vllm_servers.parsed.base_url + "/chat/completions", json=body, timeout=60)
    assert direct.status_code == 400 and "maximum context length" in direct.text  # what vLLM itself says
    resp = httpx.post(front + "/chat/completions", json=body, timeout=60)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "context_length_exceeded")
    assert "1024" in error["message"]


def test_max_tokens_over_the_context_is_a_400_naming_it(front: str) -> None:
    body = {"model": SERVED_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000}
    resp = httpx.post(front + "/chat/completions", json=body, timeout=60)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "max_tokens" in error["message"]


def test_the_vllm_metrics_we_document_exist(vllm_servers: VllmServers) -> None:
    """The names the README, alerts and autoscaling docs point at for vLLM are the ones it exports."""
    text = httpx.get(vllm_servers.parsed.base_url.removesuffix("/v1") + "/metrics", timeout=10).text
    names = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    for name in ("vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc",
                 "vllm:generation_tokens_total", "vllm:num_preemptions_total"):
        assert name in names, name


def test_a_developer_message_works_through_us_where_vllm_alone_refuses_it(front: str,
                                                                          vllm_servers: VllmServers) -> None:
    """Codex CLI sends its instructions as a ``developer`` message; vLLM with Mistral's tokenizer refuses the role,
    we send it as the system prompt it stands for."""
    body = {"model": SERVED_NAME, "temperature": 0, "max_tokens": 8,
            "messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}]}
    direct = httpx.post(vllm_servers.parsed.base_url + "/chat/completions", json=body, timeout=60)
    assert direct.status_code == 400 and "developer" in direct.text
    resp = httpx.post(front + "/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
