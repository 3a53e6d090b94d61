"""Fuzz the whole request schema against every engine: no input a client can send yields a 5xx.

Bodies are a valid request with fields replaced by hypothesis-made JSON (wrong types, unicode, lone
surrogates, huge and deeply nested values), and raw bytes that are not JSON at all. Every answer must be a
success or an OpenAI-shaped 4xx; a stream may end with an error frame, but never an internal one.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Served

FIELDS = ["model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "temperature",
          "top_p", "stop", "seed", "n", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty",
          "logit_bias", "user", "tools", "tool_choice", "parallel_tool_calls", "response_format",
          "reasoning_effort", "thinking_budget", "include_reasoning", "route", "top_k", "min_p",
          "repetition_penalty", "min_tokens", "ignore_eos", "stop_token_ids", "priority", "kv_transfer_params",
          "chat_template", "add_generation_prompt"]

ODD_STRINGS = ["", "\ud800", "a\udfffb", "\x00", "[THINK]", "[TOOL_CALLS]x[ARGS]{", "🎉" * 50, "é" * 3000,
               "x" * 200_000, "data:image/png;base64,AAAA", "http://169.254.169.254/latest/meta-data/"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(ODD_STRINGS),
                    st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(["role", "content", "type", "text", "url",
                                                                   "image_url", "function", "name", "x"]),
                                                 inner, max_size=4)), max_leaves=12)


DEEP = {"__deep_5000__": 5000, "__deep_70__": 70}  # spliced in as text: json.dumps itself cannot nest so deep


def splice_deep(body: bytes) -> bytes:
    for marker, depth in DEEP.items():
        body = body.replace(f'"{marker}"'.encode(), b"[" * depth + b'"x"' + b"]" * depth)
    return body


messages = st.one_of(
    json_values,
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "bad"]),
                                    "content": json_values}), max_size=3),
    st.just([{"role": "user", "content": [{"type": "text", "text": "hi"},
                                          {"type": "image_url", "image_url": {"url": s}}]} for s in ODD_STRINGS[-2:]]),
    st.sampled_from([*DEEP, [{"role": "user", "content": "x"}] * 5000]),
)

# small generation limits keep every example fast, while still sending each limit's odd values
max_tokens_values = st.sampled_from([1, 3, 0, -1, 10**12, 2.5, "4", True, None, []])


@st.composite
def request_bodies(draw: st.DrawFn, model: str) -> bytes:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3,
                            "temperature": 0}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=4, unique=True)):
        if name in ("max_tokens", "max_completion_tokens", "thinking_budget", "min_tokens"):
            body[name] = draw(max_tokens_values)
        elif name == "messages":
            body[name] = draw(messages)
        else:
            body[name] = draw(st.one_of(json_values, st.sampled_from(list(DEEP))))
    if draw(st.booleans()) and isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 8:
        body["max_tokens"] = 3
    return splice_deep(json.dumps(body).encode())


raw_bodies = st.one_of(st.binary(max_size=64), st.sampled_from([b"", b"[]", b"null", b"{", b"\xff\xfe{}",
                                                                b'{"model": "\\ud800"}', b"[" * 100_000]))


def check(served: Served, client: httpx.Client, body: bytes) -> None:
    resp = client.post(f"{served.base_url}/chat/completions", content=body,
                       headers={"Content-Type": "application/json"})
    assert resp.status_code < 500, (resp.status_code, resp.text[:500], body[:300])
    if resp.status_code >= 400:
        err = resp.json()["error"]
        assert isinstance(err["message"], str) and err["message"]
        assert isinstance(err["type"], str) and "code" in err and "param" in err
        return
    if resp.headers["content-type"].startswith("text/event-stream"):
        for line in resp.text.splitlines():
            if line.startswith("data: {"):
                frame = json.loads(line[6:])
                if "error" in frame:
                    assert frame["error"]["type"] != "server_error", frame
    else:
        assert resp.json()["object"] == "chat.completion"


@pytest.fixture(scope="module")
def client() -> Any:
    with httpx.Client(timeout=60) as c:
        yield c


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_no_request_body_makes_a_5xx(served: Served, client: httpx.Client, data: st.DataObject) -> None:
    check(served, client, data.draw(request_bodies(served.model)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=raw_bodies)
def test_no_raw_body_makes_a_5xx(served: Served, client: httpx.Client, body: bytes) -> None:
    check(served, client, body)


def _body(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3, **fields}


KNOWN_HURTS = {  # inputs that once gave a 500 or stalled the server, each with the answer it must get now
    "lone surrogate in content": (lambda m: {**_body(m), "messages": [{"role": "user", "content": "\ud800"}]},
                                  400, "messages[0].content"),
    "lone surrogate in a key": (lambda m: {**_body(m), "metadata": {"\udc00": 1}}, 400, None),
    "a 1,000,000-character stop string": (lambda m: _body(m, stop="x" * 1_000_000), 400, "stop"),
    "17 stop strings": (lambda m: _body(m, stop=["a"] * 17), 400, "stop"),
    "temperature that underflows": (lambda m: _body(m, temperature=1e-300), 200, None),
    "tools nested 70 deep": (lambda m: _body(m, tools=[{"type": "function", "function": {
        "name": "f", "parameters": "__deep_70__"}}]), 400, None),
    "5,000 messages over the cap": (lambda m: {**_body(m), "messages": [{"role": "user", "content": "x"}] * 5000},
                                    400, "messages"),
    "logit_bias with 2,000 entries": (lambda m: _body(m, logit_bias={str(i): 1 for i in range(2000)}), 400,
                                      "logit_bias"),
}


@pytest.mark.parametrize("case", list(KNOWN_HURTS))
def test_inputs_that_once_hurt(served: Served, client: httpx.Client, case: str) -> None:
    make, status, param = KNOWN_HURTS[case]
    body = splice_deep(json.dumps(make(served.model)).encode())
    resp = client.post(f"{served.base_url}/chat/completions", content=body,
                       headers={"Content-Type": "application/json"})
    assert resp.status_code == status, resp.text[:300]
    if status == 400:
        err = resp.json()["error"]
        assert err["type"] == "invalid_request_error"
        if param is not None:
            assert err["param"] == param, err
