"""Resilience end to end: a real uvicorn gateway in front of scripted upstreams with faults injected.

Every test makes its own upstreams (so call counts are its own) and its own gateway (so breakers start closed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx
import openai

from tests.conftest import ANSWER
from tests.support.live_server import LiveServer, free_port
from tests.support.scripted_upstream import Script, ScriptedUpstream
from unimodel.config import Settings
from unimodel.compose import build_engine

MODEL = "m"
MSG = [{"role": "user", "content": "What is 2+2?"}]
BODY = {"model": MODEL, "messages": MSG}


@contextmanager
def upstreams(*scripts: Script) -> Iterator[list[ScriptedUpstream]]:
    with ExitStack() as stack:
        yield [stack.enter_context(ScriptedUpstream({MODEL: s})) for s in scripts]


@contextmanager
def gateway(primary_url: str, wait_ready: bool = True, **settings: Any) -> Iterator[LiveServer]:
    s = Settings(engine="upstream", upstream=primary_url, model=MODEL, upstream_connect_timeout_s=1.0,
                 retry_backoff_s=0.01, **settings)
    with LiveServer(s, build_engine(s), wait_ready=wait_ready) as server:
        yield server


def post(server: LiveServer, body: dict[str, Any] = BODY) -> httpx.Response:
    return httpx.post(server.base_url + "/chat/completions", json=body, timeout=30)


def ready(server: LiveServer) -> dict[str, Any]:
    body = httpx.get(server.base_url.removesuffix("/v1") + "/ready", timeout=10).json()
    return body["resilience"]["upstreams"]


def content(resp: httpx.Response) -> str:
    """The answer's text, from a JSON body or folded from SSE frames."""
    if not resp.headers["content-type"].startswith("text/event-stream"):
        return str(resp.json()["choices"][0]["message"]["content"])
    frames = [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: {")]
    return "".join(c["delta"].get("content") or "" for f in frames for c in f.get("choices", []))


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: connection refused


def test_503s_are_retried_to_success() -> None:
    with upstreams(Script(content=ANSWER, fail_first=2)) as [up], gateway(up.base_url, retries=2) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=20)
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MSG)  # type: ignore[arg-type]
        assert raw.parse().choices[0].message.content == ANSWER
        assert raw.headers["x-unimodel-upstream"] == "primary"
        assert up.calls(MODEL) == 3


def test_a_client_error_is_never_retried() -> None:
    with upstreams(Script(error_status=400, error_message="This model's maximum context length is 10")) as [up], \
            upstreams(Script(content="from the fallback")) as [fb], \
            gateway(up.base_url, retries=2, fallback_upstreams=[fb.base_url]) as server:
        resp = post(server)
        assert resp.status_code == 400 and "maximum context length" in resp.json()["error"]["message"]
        assert up.calls(MODEL) == 1 and fb.calls(MODEL) == 0


def test_a_dead_primary_is_answered_by_the_fallback() -> None:
    with upstreams(Script(content="from the fallback")) as [fb], \
            gateway(dead_url(), wait_ready=False, retries=1, fallback_upstreams=[fb.base_url]) as server:
        for stream in (False, True):
            resp = post(server, {**BODY, "stream": stream})
            assert resp.status_code == 200 and resp.headers["x-unimodel-upstream"] == "fallback-1"
            assert content(resp) == "from the fallback"
        # exactly the same validated request went to the fallback
        assert fb.requests[0]["messages"] == [{"role": "user", "content": "What is 2+2?"}]


def test_the_breaker_opens_skips_the_primary_and_closes_after_a_successful_probe() -> None:
    with upstreams(Script(error_status=503), Script(content="from the fallback")) as [up, fb], \
            gateway(up.base_url, retries=0, breaker_failures=3, breaker_window_s=30, breaker_cooldown_s=2.0,
                    breaker_min_callers=1,  # one (anonymous) caller's failures open it: the plain breaker
                    fallback_upstreams=[fb.base_url]) as server:
        assert ready(server)["primary"]["breaker"] == "closed"
        for _ in range(3):
            resp = post(server)
            assert resp.status_code == 200 and resp.headers["x-unimodel-upstream"] == "fallback-1"
        assert up.calls(MODEL) == 3
        state = ready(server)
        assert state["primary"]["breaker"] == "open" and state["fallback-1"]["breaker"] == "closed"
        for _ in range(2):  # open: straight to the fallback, the primary untouched
            assert post(server).headers["x-unimodel-upstream"] == "fallback-1"
        assert up.calls(MODEL) == 3
        up.scripts[MODEL] = Script(content=ANSWER)  # the primary recovers
        time.sleep(2.1)
        assert ready(server)["primary"]["breaker"] == "half-open"
        resp = post(server)  # the probe
        assert resp.status_code == 200 and resp.headers["x-unimodel-upstream"] == "primary"
        assert ready(server)["primary"]["breaker"] == "closed" and up.calls(MODEL) == 4


def test_an_open_breaker_without_a_fallback_is_a_fast_503_that_never_touches_the_primary() -> None:
    with upstreams(Script(error_status=503)) as [up], \
            gateway(up.base_url, retries=0, breaker_failures=2, breaker_cooldown_s=30,
                    breaker_min_callers=1) as server:  # the plain breaker: one caller's failures open it
        assert [post(server).status_code for _ in range(2)] == [502, 502]
        started = time.monotonic()
        resp = post(server)
        assert time.monotonic() - started < 1.0
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "circuit_open"
        assert 1 <= int(resp.headers["retry-after"]) <= 30
        assert up.calls(MODEL) == 2
        assert ready(server)["primary"]["breaker"] == "open"


def test_canary_weight_one_sends_everything_to_the_canary() -> None:
    with upstreams(Script(content="from the primary"), Script(content="from the canary")) as [up, canary], \
            gateway(up.base_url, canary_upstream=canary.base_url, canary_weight=1.0) as server:
        for _ in range(3):
            resp = post(server)
            assert resp.headers["x-unimodel-upstream"] == "canary"
            assert resp.json()["choices"][0]["message"]["content"] == "from the canary"
        assert up.calls(MODEL) == 0 and canary.calls(MODEL) == 3
        assert set(ready(server)) == {"primary", "canary"}


def test_no_first_token_in_time_is_a_504() -> None:
    with upstreams(Script(content=ANSWER, delay_s=2.0)) as [up], \
            gateway(up.base_url, retries=2, first_token_timeout_s=0.3) as server:
        started = time.monotonic()
        resp = post(server)
        assert time.monotonic() - started < 1.5
        assert resp.status_code == 504 and resp.json()["error"]["code"] == "upstream_timeout"
        assert up.calls(MODEL) == 1


def test_a_stream_that_drops_midway_is_not_retried() -> None:
    with upstreams(Script(content=ANSWER * 4, drop_after_frames=5)) as [up], \
            gateway(up.base_url, retries=2) as server:
        resp = post(server, {**BODY, "stream": True})
        assert resp.status_code == 200
        frames = [json.loads(line[6:]) for line in resp.text.splitlines()
                  if line.startswith("data: {")]
        assert frames[0]["choices"][0]["delta"].get("role") == "assistant"
        assert frames[-1]["error"]["type"] == "upstream_error"
        assert resp.text.rstrip().endswith("data: [DONE]")
        assert up.calls(MODEL) == 1


def test_the_total_timeout_ends_a_stream_with_an_error_frame() -> None:
    with upstreams(Script(content="tok " * 400, chunk_chars=4, frame_delay_s=0.01)) as [up], \
            gateway(up.base_url, total_timeout_s=0.5) as server:
        resp = post(server, {**BODY, "stream": True})
        assert resp.status_code == 200
        last = [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: {")][-1]
        assert last["error"]["code"] == "upstream_timeout" and "total timeout" in last["error"]["message"]
        assert up.calls(MODEL) == 1


def test_ready_shows_every_upstream_and_the_stage_can_be_all_off() -> None:
    with upstreams(Script(content=ANSWER)) as [up], upstreams(Script(content=ANSWER)) as [fb], \
            gateway(up.base_url, fallback_upstreams=[fb.base_url, dead_url()]) as server:
        state = ready(server)
        assert state["primary"] == {"breaker": "closed", "failures": 0, "opened": 0}
        assert state["fallback-1"]["ready"] is True and state["fallback-2"]["ready"] is False
    with upstreams(Script(content=ANSWER)) as [up], gateway(up.base_url, retries=0, breaker_failures=0) as server:
        resp = post(server)
        assert resp.status_code == 200 and "x-unimodel-upstream" not in resp.headers
        assert ready(server) == {"primary": {"breaker": "disabled"}}


def test_a_routes_timeouts_and_upstreams_apply_to_its_requests() -> None:
    routes = {"quick": {"timeouts": {"first_token_s": 0.3}}, "spare": {"upstreams": ["fallback-1"]}}
    with upstreams(Script(content=ANSWER, delay_s=1.0), Script(content="from the fallback")) as [up, fb], \
            gateway(up.base_url, routes=routes, fallback_upstreams=[fb.base_url]) as server:
        resp = httpx.post(server.base_url + "/chat/completions", json=BODY, headers={"X-Unimodel-Route": "quick"},
                          timeout=30)
        # the primary is too slow for this route: the fallback answers
        assert resp.status_code == 200 and resp.headers["x-unimodel-upstream"] == "fallback-1"
        resp = httpx.post(server.base_url + "/chat/completions", json=BODY, headers={"X-Unimodel-Route": "spare"},
                          timeout=30)
        assert resp.headers["x-unimodel-upstream"] == "fallback-1" and content(resp) == "from the fallback"
        resp = post(server)  # the default route: no timeout of ours, the slow primary answers
        assert resp.headers["x-unimodel-upstream"] == "primary" and content(resp) == ANSWER
        assert up.calls(MODEL) == 2 and fb.calls(MODEL) == 2
