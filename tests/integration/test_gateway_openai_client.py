"""The official openai client against a real uvicorn unimodel in front of the scripted upstream."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ANSWER, REASONING
from tests.support.live_server import LiveServer, free_port
from tests.support.scripted_upstream import ScriptedUpstream
from unimodel.config import Settings
from unimodel.compose import build_engine

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]
MSG = [{"role": "user", "content": "What is 2+2?"}]


def _gateway(upstream_url: str, wait_ready: bool = True, **settings: Any) -> LiveServer:
    s = Settings(engine="upstream", upstream=upstream_url, upstream_connect_timeout_s=1.0,
                 model_families={"think-tags": "think-tags"}, **settings)
    return LiveServer(s, build_engine(s), wait_ready=wait_ready)


@pytest.fixture(scope="module")
def gateway(scripted_upstream: ScriptedUpstream) -> Iterator[LiveServer]:
    with _gateway(scripted_upstream.base_url, upstream_read_timeout_s=1.5) as server:
        yield server


@pytest.fixture()
def client(gateway: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=0, timeout=20)


def fold_stream(stream: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"reasoning": "", "content": "", "calls": {}, "finish": None, "usage": None}
    for chunk in stream:
        if chunk.usage is not None:
            out["usage"] = chunk.usage
        for choice in chunk.choices:
            d = choice.delta
            extra = d.model_extra or {}
            out["reasoning"] += extra.get("reasoning") or ""
            assert extra.get("reasoning") == extra.get("reasoning_content")
            out["content"] += d.content or ""
            for tc in d.tool_calls or []:
                call = out["calls"].setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                call["id"] = call["id"] or tc.id
                call["name"] += (tc.function.name or "") if tc.function else ""
                call["arguments"] += (tc.function.arguments or "") if tc.function else ""
            if choice.finish_reason:
                out["finish"] = choice.finish_reason
    out["calls"] = [out["calls"][i] for i in sorted(out["calls"])]
    return out


def fold_message(resp: Any) -> dict[str, Any]:
    m = resp.choices[0].message
    extra = m.model_extra or {}
    assert extra.get("reasoning") == extra.get("reasoning_content")
    return {
        "reasoning": extra.get("reasoning") or "",
        "content": m.content or "",
        "calls": [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                  for c in m.tool_calls or []],
        "finish": resp.choices[0].finish_reason,
        "usage": resp.usage,
    }


def without_ids(folded: dict[str, Any]) -> dict[str, Any]:
    return {**folded, "usage": None, "calls": [{**c, "id": None} for c in folded["calls"]]}


def test_plain_chat(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model="raw-plain", messages=MSG)
    assert resp.choices[0].message.content == ANSWER
    assert (resp.choices[0].message.model_extra or {}).get("reasoning") is None
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.prompt_tokens == 11


@pytest.mark.parametrize("model", ["raw-think", "parsed-think", "json-body"])
def test_reasoning_separated_from_answer(client: openai.OpenAI, model: str) -> None:
    folded = fold_message(client.chat.completions.create(model=model, messages=MSG))
    assert folded["reasoning"] == REASONING
    assert folded["content"] == ANSWER
    assert folded["usage"].completion_tokens_details.reasoning_tokens > 0


@pytest.mark.parametrize("model", ["raw-think", "parsed-think", "think-tags"])
def test_streaming_reasoning_and_usage(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(model=model, messages=MSG, stream=True,
                                            stream_options={"include_usage": True})
    folded = fold_stream(stream)
    assert folded["reasoning"] == REASONING
    assert folded["content"] == ANSWER
    assert folded["finish"] == "stop"
    assert folded["usage"].completion_tokens_details.reasoning_tokens > 0


@pytest.mark.parametrize("model", ["raw-tools", "parsed-tools"])
@pytest.mark.parametrize("stream", [False, True])
def test_parallel_tool_calls(client: openai.OpenAI, model: str, stream: bool) -> None:
    resp = client.chat.completions.create(model=model, messages=MSG, tools=TOOLS, stream=stream)  # type: ignore[call-overload]
    folded = fold_stream(resp) if stream else fold_message(resp)
    assert folded["finish"] == "tool_calls"
    assert [c["name"] for c in folded["calls"]] == ["get_weather", "get_time"]
    assert json.loads(folded["calls"][0]["arguments"]) == {"city": "Paris", "unit": "celsius"}
    assert json.loads(folded["calls"][1]["arguments"])["note"] == 'a } and a "quote"'
    assert all(c["id"] for c in folded["calls"]) and len({c["id"] for c in folded["calls"]}) == 2
    assert folded["reasoning"] == REASONING
    assert folded["content"] == ""


@pytest.mark.parametrize("model", ["raw-plain", "raw-think", "raw-tools", "parsed-think", "parsed-tools",
                                   "raw-bad-tool", "think-tags", "json-body"])
def test_streamed_equals_non_streamed(client: openai.OpenAI, model: str) -> None:
    whole = fold_message(client.chat.completions.create(model=model, messages=MSG, tools=TOOLS))
    streamed = fold_stream(client.chat.completions.create(model=model, messages=MSG, tools=TOOLS, stream=True))
    assert without_ids(streamed) == without_ids(whole)


def test_malformed_tool_json_comes_back_as_a_call_with_the_raw_arguments(client: openai.OpenAI) -> None:
    """As vLLM's Mistral tool parser does: once a call has a name it stays a call; no marker leaks."""
    folded = fold_message(client.chat.completions.create(model="raw-bad-tool", messages=MSG, tools=TOOLS))
    assert [(c["name"], c["arguments"]) for c in folded["calls"]] == [("get_weather", '{"city": "Par')]
    assert folded["finish"] == "tool_calls"
    assert "[TOOL_CALLS]" not in (folded["content"] or "")


def test_upstream_sees_raw_output_request_and_passthrough(client: openai.OpenAI,
                                                          scripted_upstream: ScriptedUpstream) -> None:
    client.chat.completions.create(
        model="raw-plain", messages=MSG, response_format={"type": "json_object"}, reasoning_effort="low",
        extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "route": "default",
                    "include_reasoning": True, "priority": -100, "kv_transfer_params": {"do_remote_prefill": True},
                    "chat_template": "{{ 'pwned' }}", "add_generation_prompt": False},
    )
    seen = scripted_upstream.requests[-1]
    for dropped in ("priority", "kv_transfer_params", "chat_template", "add_generation_prompt"):
        assert dropped not in seen, dropped
    assert "skip_special_tokens" not in seen  # Mistral: vLLM keeps the markers by default (and decodes better)
    assert seen["response_format"] == {"type": "json_object"}
    assert (seen["top_k"], seen["min_p"], seen["repetition_penalty"]) == (20, 0.05, 1.1)
    assert seen["reasoning_effort"] == "high"  # low → the model's "high"
    assert "route" not in seen and "include_reasoning" not in seen
    assert seen["stream"] is True


def test_minimal_effort_maps_to_none(client: openai.OpenAI, scripted_upstream: ScriptedUpstream) -> None:
    client.chat.completions.create(model="raw-plain", messages=MSG, reasoning_effort="minimal")
    assert scripted_upstream.requests[-1]["reasoning_effort"] == "none"


def test_models_health_ready(gateway: LiveServer) -> None:
    base = gateway.base_url.removesuffix("/v1")
    assert httpx.get(base + "/health").json() == {"status": "ok"}
    assert httpx.get(base + "/ready").status_code == 200
    ids = [m["id"] for m in httpx.get(gateway.base_url + "/models").json()["data"]]
    assert "raw-think" in ids


# ---- errors ---------------------------------------------------------------------------------------------


def _post(gateway: LiveServer, body: Any, **kw: Any) -> httpx.Response:
    if isinstance(body, (dict, list)):
        return httpx.post(gateway.base_url + "/chat/completions", json=body, timeout=20, **kw)
    return httpx.post(gateway.base_url + "/chat/completions", content=body, timeout=20,
                      headers={"content-type": "application/json"}, **kw)


def _assert_error(resp: httpx.Response, status: int, etype: str | None = None, param: str | None = None,
                  code: str | None = None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if etype:
        assert err["type"] == etype
    if param:
        assert err["param"] == param
    if code:
        assert err["code"] == code
    return err


@pytest.mark.parametrize("body,param", [
    (b"{not json", None),
    (b"[1, 2]", None),
    (b"\xff\xfe", None),
    ({"model": "raw-plain"}, "messages"),
    ({"model": "raw-plain", "messages": []}, "messages"),
    ({"model": "raw-plain", "messages": MSG, "temperature": 9}, "temperature"),
    ({"model": "raw-plain", "messages": MSG, "max_tokens": 0}, "max_tokens"),
    ({"model": "raw-plain", "messages": MSG, "n": 9}, "n"),  # above --max-n (8)
    ({"model": "raw-plain", "messages": MSG, "reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"model": "raw-plain", "messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
    ({"model": "raw-plain", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": "raw-plain", "messages": MSG, "tool_choice": "required"}, "tool_choice"),
    ({"model": "raw-plain", "messages": MSG, "response_format": {"type": "xml"}}, "response_format.type"),
    ({"model": "raw-plain", "messages": MSG, "reasoning_effort": "none", "thinking_budget": 10},
     "thinking_budget"),
    ({"model": "raw-plain", "messages": MSG, "seed": 2**70}, "seed"),
    ({"model": "raw-plain", "messages": [{"role": "user", "content": [{"type": "audio", "data": "x"}]}]},
     "messages[0].content[0]"),
    ({"model": "raw-plain", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages[0].content[0].image_url.url"),
])
def test_bad_requests_are_400(gateway: LiveServer, body: Any, param: str | None) -> None:
    _assert_error(_post(gateway, body), 400, "invalid_request_error", param)


def test_unknown_model_is_404(gateway: LiveServer) -> None:
    _assert_error(_post(gateway, {"model": "nope", "messages": MSG}), 404, code="model_not_found", param="model")


def test_body_over_limit_is_413(gateway: LiveServer) -> None:
    big = {"model": "raw-plain", "messages": [{"role": "user", "content": "x" * (21 * 1024 * 1024)}]}
    _assert_error(_post(gateway, big), 413, code="request_too_large")


def test_unknown_route_is_openai_shaped_404(gateway: LiveServer) -> None:
    _assert_error(httpx.get(gateway.base_url + "/nothing-here"), 404)


def test_upstream_4xx_keeps_status_and_message(gateway: LiveServer) -> None:
    err = _assert_error(_post(gateway, {"model": "fails-400", "messages": MSG}), 400)
    assert "maximum context length" in err["message"]


def test_upstream_5xx_is_502(gateway: LiveServer) -> None:
    err = _assert_error(_post(gateway, {"model": "fails-503", "messages": MSG}), 502)
    assert err["message"] == "the upstream failed (HTTP 503)"  # its own words stay in our log


def test_upstream_timeout_is_504(gateway: LiveServer) -> None:
    _assert_error(_post(gateway, {"model": "slow", "messages": MSG}), 504, code="upstream_timeout")


def test_upstream_refusing_connections_is_502() -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with _gateway(dead, wait_ready=False, model="m") as server:
        _assert_error(_post(server, {"model": "m", "messages": MSG}), 502, code="upstream_unreachable")
        assert httpx.get(server.base_url.removesuffix("/v1") + "/ready").status_code == 503


def test_openai_client_sees_status_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MSG)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="raw-plain", messages=MSG, temperature=7)  # type: ignore[arg-type]


@pytest.mark.parametrize("model", ["drops", "error-frame"])
def test_failure_mid_stream_ends_with_error_event(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(model=model, messages=MSG, stream=True)
    got = ""
    with pytest.raises(openai.APIError):
        for chunk in stream:
            got += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert got  # some content arrived before the failure


def test_failure_mid_response_is_502_when_not_streaming(gateway: LiveServer) -> None:
    _assert_error(_post(gateway, {"model": "drops", "messages": MSG}), 502)


def test_client_disconnect_cancels_upstream(gateway: LiveServer, scripted_upstream: ScriptedUpstream) -> None:
    before = scripted_upstream.disconnects
    with httpx.stream("POST", gateway.base_url + "/chat/completions", timeout=20,
                      json={"model": "long", "messages": MSG, "stream": True}) as resp:
        lines = resp.iter_lines()
        for _ in range(5):
            next(lines)
    deadline = time.monotonic() + 10
    while scripted_upstream.disconnects == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scripted_upstream.disconnects > before


def test_api_keys_are_enforced(scripted_upstream: ScriptedUpstream) -> None:
    with _gateway(scripted_upstream.base_url, api_keys=["sk-good"]) as server:
        _assert_error(_post(server, {"model": "raw-plain", "messages": MSG}), 401, "authentication_error")
        bad = _post(server, {"model": "raw-plain", "messages": MSG}, headers={"Authorization": "Bearer sk-bad"})
        _assert_error(bad, 401)
        ok = openai.OpenAI(base_url=server.base_url, api_key="sk-good", max_retries=0)
        assert ok.chat.completions.create(model="raw-plain", messages=MSG).choices[0].message.content == ANSWER  # type: ignore[arg-type]


def test_client_disconnect_cancels_upstream_when_not_streaming(gateway: LiveServer,
                                                               scripted_upstream: ScriptedUpstream) -> None:
    before = scripted_upstream.disconnects
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway.base_url + "/chat/completions", timeout=0.5,
                   json={"model": "long", "messages": MSG})
    deadline = time.monotonic() + 10
    while scripted_upstream.disconnects == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scripted_upstream.disconnects > before
