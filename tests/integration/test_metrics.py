"""GET /metrics on real servers: counters and histograms after real requests through a gateway in front of the
scripted upstream, failures with their error type, a breaker that opens, requests in flight, the embedded
engine's queue and batch (tiny-random), bounded labels, the scrape's protection; and every metric and label the
deploy examples (alert rules, KEDA) name exists in a real scrape."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import promql
from tests.support.live_server import LiveServer, free_port
from tests.support.scripted_upstream import Script, ScriptedUpstream
from unimodel.config import Settings
from unimodel.compose import build_engine
from unimodel.gateway.keys import plain_key_name
from unimodel.protocol.effort import EFFORTS
from unimodel.telemetry.metrics import OTHER, OTHER_ERROR, known_error_codes

K1, K2 = "sk-metrics-one", "sk-metrics-two"
KEY_1, KEY_2 = plain_key_name(K1), plain_key_name(K2)  # their names in the labels
SCRAPE_KEY = "scrape-secret"
MSG = [{"role": "user", "content": "What is 2+2?"}]
SCRIPTS = {
    "think": Script(mode="parsed", reasoning="Let me think it through. " * 2, content="The answer is 4.",
                    chunk_chars=5),
    "fails-400": Script(error_status=400, error_message="This model's maximum context length is 10"),
    "slow": Script(content="late", delay_s=1.0),
}
# free text a client controls: none of it may become a label value
UNKNOWN_MODEL, UNKNOWN_ROUTE, USER = "gpt-made-up-7b", "made-up-route", "jane@example.org"


@dataclass
class Scrape:
    text: str
    samples: list[Any]
    families: dict[str, set[str]]  # family name → its label names

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called ``name`` whose labels include ``labels``."""
        return sum(s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items())

    def count(self, name: str, **labels: str) -> int:
        return sum(1 for s in self.samples if s.name == name and labels.items() <= s.labels.items())


def scrape(server: LiveServer) -> Scrape:
    """A scrape as Prometheus makes it, with the metrics key (a server without keys ignores it: loopback)."""
    resp = httpx.get(server.base_url.removesuffix("/v1") + "/metrics", timeout=10,
                     headers={"Authorization": f"Bearer {SCRAPE_KEY}"})
    assert resp.status_code == 200, resp.text
    families = list(text_string_to_metric_families(resp.text))
    return Scrape(resp.text, [s for f in families for s in f.samples],
                  {f.name: {label for s in f.samples for label in s.labels} for f in families})


def wait_for(probe: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def gateway(upstream: ScriptedUpstream, tmp: Path, **settings: Any) -> LiveServer:
    s = Settings(engine="upstream", upstream=upstream.base_url, upstream_connect_timeout_s=1.0, data_dir=tmp,
                 **settings)
    return LiveServer(s, build_engine(s))


@dataclass
class Served:
    server: LiveServer
    scrape: Scrape  # after the traffic below
    usages: list[dict[str, Any]]  # of K1's three successful requests
    statuses: dict[str, int]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One gateway, one mix of traffic: K1 succeeds three times (JSON and SSE, effort high) and is refused a
    fourth by the high-reasoning quota; K2 fails in every way a client or the upstream can make it fail."""
    with ScriptedUpstream(SCRIPTS) as up, \
            gateway(up, tmp_path_factory.mktemp("metrics"), api_keys=[K1, K2], high_reasoning_rpm=3,
                    metrics_key=SCRAPE_KEY) as server, \
            httpx.Client(base_url=server.base_url, timeout=30) as client:
        one, two = {"Authorization": f"Bearer {K1}"}, {"Authorization": f"Bearer {K2}"}
        usages = []
        for stream in (False, False, True):
            body = {"model": "think", "messages": MSG, "reasoning_effort": "high", "stream": stream, "user": USER}
            if stream:
                body["stream_options"] = {"include_usage": True}
                with client.stream("POST", "/chat/completions", json=body, headers=one) as resp:
                    assert resp.status_code == 200
                    frames = [line for line in resp.iter_lines() if line.startswith('data: {"')]
                usages.append(json.loads(frames[-1][6:])["usage"])
            else:
                resp = client.post("/chat/completions", json=body, headers=one)
                assert resp.status_code == 200
                usages.append(resp.json()["usage"])
        statuses = {
            "over the quota": client.post("/chat/completions", json={
                "model": "think", "messages": MSG, "reasoning_effort": "high"}, headers=one).status_code,
            "upstream 400": client.post("/chat/completions", json={"model": "fails-400", "messages": MSG},
                                        headers=two).status_code,
            "unknown model": client.post("/chat/completions", json={"model": UNKNOWN_MODEL, "messages": MSG},
                                         headers=two).status_code,
            "unknown route": client.post("/chat/completions", json={"model": "think", "route": UNKNOWN_ROUTE,
                                                                    "messages": MSG}, headers=two).status_code,
            "wrong key": client.post("/chat/completions", json={"model": "think", "messages": MSG},
                                     headers={"Authorization": "Bearer sk-wrong"}).status_code,
        }
        log = server.app.state.request_log
        assert log is not None and log.writer.wait_idle(20)
        yield Served(server, scrape(server), usages, statuses)


def test_counters_and_histograms_follow_real_requests(served: Served) -> None:
    m, usages = served.scrape, served.usages
    ok = {"key_name": KEY_1, "route": "default", "model": "think", "reasoning_effort": "high"}
    assert m.value("unimodel_requests_total", **ok, status="200", error_type="") == 3
    prompt = sum(u["prompt_tokens"] for u in usages)
    reasoning = sum(u["completion_tokens_details"]["reasoning_tokens"] for u in usages)
    completion = sum(u["completion_tokens"] for u in usages)
    assert prompt > 0 and 0 < reasoning < completion
    assert m.value("unimodel_tokens_total", **ok, token_type="prompt") == prompt
    assert m.value("unimodel_tokens_total", **ok, token_type="reasoning") == reasoning
    assert m.value("unimodel_tokens_total", **ok, token_type="answer") == completion - reasoning

    gen_ai = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "unimodel", "gen_ai_request_model": "think",
              "route": "default", "reasoning_effort": "high"}
    assert m.value("gen_ai_client_token_usage_sum", **gen_ai, gen_ai_token_type="input") == prompt
    assert m.value("gen_ai_client_token_usage_sum", **gen_ai, gen_ai_token_type="output") == completion
    for name in ("gen_ai_server_request_duration_seconds", "gen_ai_server_time_to_first_token_seconds",
                 "gen_ai_server_time_per_output_token_seconds"):
        labels = {**gen_ai, "error_type": ""} if "request_duration" in name else gen_ai
        assert m.value(f"{name}_count", **labels) == 3, name
        assert m.value(f"{name}_bucket", **labels, le="+Inf") == 3, name
        assert m.value(f"{name}_sum", **labels) > 0, name
    assert m.value("gen_ai_server_time_to_first_token_seconds_sum", **gen_ai) < \
        m.value("gen_ai_server_request_duration_seconds_sum", **gen_ai, error_type="")
    assert m.value("unimodel_requests_in_flight") == 0
    assert m.value("unimodel_engine_ready", engine="upstream") == 1
    assert m.value("unimodel_upstream_up", upstream="primary") == 1
    assert m.value("unimodel_upstream_breaker_state", upstream="primary", state="closed") == 1
    assert m.value("unimodel_request_log_written_rows_total") == 8
    assert m.value("unimodel_request_log_buffered_rows") == 0


def test_failures_are_counted_with_their_error_type(served: Served) -> None:
    assert served.statuses == {"over the quota": 429, "upstream 400": 400, "unknown model": 404,
                               "unknown route": 400, "wrong key": 401}
    m = served.scrape
    # the upstream's prompt-too-long answer (vLLM's words) is ours: context_length_exceeded
    assert m.value("unimodel_requests_total", key_name=KEY_2, model="fails-400", status="400",
                   error_type="context_length_exceeded") == 1
    assert m.value("gen_ai_server_request_duration_seconds_count", gen_ai_request_model="fails-400",
                   error_type="context_length_exceeded") == 1
    assert m.value("unimodel_requests_total", key_name=KEY_2, model="", status="404",
                   error_type="model_not_found") == 1
    assert m.value("unimodel_requests_total", key_name=KEY_2, route="", status="400",
                   error_type="route_not_found") == 1
    assert m.value("unimodel_requests_total", key_name="", status="401", error_type="invalid_api_key") == 1
    # failures made no token series and no TTFT
    assert m.count("unimodel_tokens_total", key_name=KEY_2) == 0
    assert m.count("gen_ai_server_time_to_first_token_seconds_count", gen_ai_request_model="fails-400") == 0


def test_labels_are_bounded(served: Served) -> None:
    m = served.scrape
    for free_text in (UNKNOWN_MODEL, UNKNOWN_ROUTE, USER, "sk-wrong", K1, K2):
        assert free_text not in m.text
    allowed = {
        "route": {"default", "hard", "image", "agent"},
        "gen_ai_request_model": set(SCRIPTS), "model": set(SCRIPTS),
        "key_name": {"anonymous", KEY_1, KEY_2},
        "reasoning_effort": set(EFFORTS),
        "error_type": known_error_codes() | {OTHER_ERROR},
        "status": {str(s) for s in range(100, 600)},
        "upstream": {"primary"},
    }
    for sample in m.samples:
        for label, values in allowed.items():
            if label in sample.labels:
                assert sample.labels[label] in values | {"", OTHER}, (sample.name, label, sample.labels[label])


def test_in_flight_counts_a_running_request(served: Served) -> None:
    server = served.server
    done: list[int] = []
    worker = threading.Thread(target=lambda: done.append(httpx.post(
        server.base_url + "/chat/completions", json={"model": "slow", "messages": MSG},
        headers={"Authorization": f"Bearer {K1}"}, timeout=30).status_code))
    worker.start()
    try:
        wait_for(lambda: scrape(server).value("unimodel_requests_in_flight") == 1, 10)
        assert scrape(server).count("gen_ai_server_request_duration_seconds_count", gen_ai_request_model="slow") == 0
    finally:
        worker.join(30)
    assert done == [200]
    after = scrape(server)
    assert after.value("unimodel_requests_in_flight") == 0
    assert after.value("gen_ai_server_request_duration_seconds_sum", gen_ai_request_model="slow") >= 1.0


def test_rate_limit_rejections_are_counted_per_key(served: Served) -> None:
    m = served.scrape
    assert m.value("unimodel_rate_limit_rejections_total", key_name=KEY_1, route="default") == 1
    assert m.value("unimodel_rate_limit_rejections_total", key_name=KEY_2) == 0
    assert m.value("unimodel_requests_total", key_name=KEY_1, reasoning_effort="high", status="429",
                   error_type="rate_limit_exceeded") == 1


def test_a_failing_upstream_opens_its_breaker(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # a named upstream nobody listens for: its probe fails
    down = {"down": Script(error_status=503, error_message="engine overloaded")}
    with ScriptedUpstream(down) as up, gateway(up, tmp_path, retries=0, breaker_failures=2, breaker_min_callers=1,
                                               upstreams={"spare": {"url": dead}}) as server:
        codes = [httpx.post(server.base_url + "/chat/completions", json={"model": "down", "messages": MSG},
                            timeout=30).status_code for _ in range(3)]
        assert codes == [502, 502, 503]
        m = scrape(server)
    assert m.value("unimodel_upstream_breaker_state", upstream="primary", state="open") == 1
    assert m.value("unimodel_upstream_breaker_state", upstream="primary", state="closed") == 0
    assert m.value("unimodel_upstream_breaker_opened_total", upstream="primary") == 1
    assert m.value("unimodel_requests_total", status="502", error_type="upstream_error") == 2
    assert m.value("unimodel_requests_total", status="503", error_type="circuit_open") == 1
    assert m.value("unimodel_upstream_up", upstream="primary") == 1  # it answers its probe; requests fail
    assert m.value("unimodel_upstream_up", upstream="spare") == 0
    assert m.value("unimodel_upstream_breaker_state", upstream="spare", state="closed") == 1


def test_the_scrape_key_and_openmetrics(tmp_path: Path) -> None:
    with ScriptedUpstream(SCRIPTS) as up, gateway(up, tmp_path, api_keys=[K1], metrics_key="scrape-secret") as server:
        url = server.base_url.removesuffix("/v1") + "/metrics"
        for headers in ({}, {"Authorization": f"Bearer {K1}"}, {"Authorization": "Bearer scrape-secre"}):
            resp = httpx.get(url, headers=headers, timeout=10)
            assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"
        text = httpx.get(url, headers={"Authorization": "Bearer scrape-secret"}, timeout=10)
        assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain; version=0.0.4")
        open_metrics = httpx.get(url, timeout=10, headers={"Authorization": "Bearer scrape-secret",
                                                           "Accept": "application/openmetrics-text; version=1.0.0"})
        assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
        assert open_metrics.text.endswith("# EOF\n")
    with ScriptedUpstream(SCRIPTS) as up, gateway(up, tmp_path, metrics=False) as server:
        assert httpx.get(server.base_url.removesuffix("/v1") + "/metrics", timeout=10).status_code == 404


TOKENS = 96  # per request: long enough for a scrape to catch the queue


@dataclass
class LocalRun:
    scrape: Scrape
    seen: list[tuple[float, float, float]]  # (queue depth, running, occupancy) while the requests ran
    completion_tokens: int


@contextmanager
def _local(tiny_cache_dir: Path, tmp: Path) -> Iterator[LiveServer]:
    s = Settings(engine="local", model="tiny-random", cache_dir=tiny_cache_dir, device="cpu", dtype="float32",
                 max_num_seqs=1, max_queue=8, data_dir=tmp)
    with LiveServer(s, build_engine(s)) as server:
        yield server


@pytest.fixture(scope="module")
def local_run(tiny_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRun]:
    """Three requests at once on a one-slot batch: one runs, the others queue."""
    with _local(tiny_cache_dir, tmp_path_factory.mktemp("local")) as server:
        usages: list[int] = []
        body = {"model": "tiny-random", "messages": MSG, "max_tokens": TOKENS, "ignore_eos": True, "temperature": 0}

        def one() -> None:
            resp = httpx.post(server.base_url + "/chat/completions", json=body, timeout=120)
            usages.append(resp.json()["usage"]["completion_tokens"])

        workers = [threading.Thread(target=one) for _ in range(3)]
        seen: list[tuple[float, float, float]] = []
        for w in workers:
            w.start()
        try:
            def queued() -> bool:
                m = scrape(server)
                seen.append((m.value("unimodel_engine_queue_depth"), m.value("unimodel_engine_running_sequences"),
                             m.value("unimodel_engine_batch_occupancy")))
                return (seen[-1][0] >= 1 and seen[-1][1] == 1) or len(usages) == 3
            wait_for(queued, 60)
        finally:
            for w in workers:
                w.join(120)
        assert len(usages) == 3
        yield LocalRun(scrape(server), seen, sum(usages))


def test_the_local_engine_exports_its_queue_batch_and_tokens(local_run: LocalRun) -> None:
    assert (1.0, 1.0, 1.0) in [(min(q, 1.0), r, o) for q, r, o in local_run.seen]  # one running, others waiting
    m = local_run.scrape
    assert local_run.completion_tokens == 3 * TOKENS
    assert m.value("unimodel_engine_generated_tokens_total") == local_run.completion_tokens
    assert m.value("unimodel_engine_decode_steps_total") >= 3 * (TOKENS - 1)
    assert m.value("unimodel_engine_max_sequences") == 1
    assert m.value("unimodel_engine_queue_depth") == 0 and m.value("unimodel_engine_running_sequences") == 0
    assert m.value("unimodel_engine_ready", engine="local") == 1
    assert m.value("unimodel_tokens_total", model="tiny-random", token_type="answer") + \
        m.value("unimodel_tokens_total", model="tiny-random", token_type="reasoning") == local_run.completion_tokens
    assert m.value("unimodel_requests_total", key_name="anonymous", model="tiny-random", status="200") == 3


def test_the_deploy_examples_name_only_metrics_that_exist(served: Served, local_run: LocalRun) -> None:
    families: dict[str, set[str]] = {}
    for m in (served.scrape, local_run.scrape):
        for name, labels in m.families.items():
            families.setdefault(name, set()).update(labels)
    found = {where: promql.problems(expr, families) for where, expr in promql.queries().items()}
    assert len(found) >= 10 and {where: p for where, p in found.items() if p} == {}
