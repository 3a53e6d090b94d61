"""Reasoning effort levels and thinking budgets on the upstream engine (scripted upstream)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.live_server import LiveServer
from tests.support.scripted_upstream import Script, ScriptedUpstream
from unimodel.config import Settings
from unimodel.compose import build_engine

THOUGHT = "t "  # one token a frame: chunk_chars=2
LONG_THINKER = {
    "raw-thinker": Script(mode="raw", reasoning=THOUGHT * 3000, content="The answer is 42.", chunk_chars=2),
    "parsed-thinker": Script(mode="parsed", reasoning=THOUGHT * 3000, content="The answer is 42.",
                             chunk_chars=2),
    "short-thinker": Script(mode="raw", reasoning=THOUGHT * 50, content="Short.", chunk_chars=2),
}
MSG = [{"role": "user", "content": "What is six times seven?"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(LONG_THINKER) as up:
        yield up


@pytest.fixture(scope="module")
def gateway(upstream: ScriptedUpstream) -> Iterator[LiveServer]:
    settings = Settings(engine="upstream", upstream=upstream.base_url)
    with LiveServer(settings, build_engine(settings)) as server:
        yield server


@pytest.fixture()
def client(gateway: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0, timeout=60)


def _stream(client: openai.OpenAI, **kw: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"reasoning": "", "content": "", "finish": None, "usage": None, "applied": None}
    for chunk in client.chat.completions.create(messages=MSG, stream=True,  # type: ignore[call-overload]
                                                stream_options={"include_usage": True}, **kw):
        if chunk.usage:
            out["usage"] = chunk.usage
        for c in chunk.choices:
            out["reasoning"] += (c.delta.model_extra or {}).get("reasoning") or ""
            out["content"] += c.delta.content or ""
            if c.finish_reason:
                out["finish"] = c.finish_reason
                out["applied"] = (chunk.model_extra or {}).get("unimodel_reasoning")
    return out


def _whole(client: openai.OpenAI, **kw: Any) -> dict[str, Any]:
    raw = client.chat.completions.with_raw_response.create(messages=MSG, **kw)  # type: ignore[call-overload]
    resp = raw.parse()
    m = resp.choices[0].message
    return {"reasoning": (m.model_extra or {}).get("reasoning") or "", "content": m.content or "",
            "finish": resp.choices[0].finish_reason, "usage": resp.usage,
            "applied": (resp.model_extra or {}).get("unimodel_reasoning"),
            "header": raw.headers.get("x-unimodel-reasoning")}


@pytest.mark.parametrize("model", ["raw-thinker", "parsed-thinker"])
@pytest.mark.parametrize("effort,limit", [("low", 1024), ("medium", 4096), ("high", None)])
@pytest.mark.parametrize("stream", [False, True])
def test_budget_holds_and_answer_follows(client: openai.OpenAI, upstream: ScriptedUpstream, model: str,
                                         effort: str, limit: int | None, stream: bool) -> None:
    before = len(upstream.requests)
    got = (_stream if stream else _whole)(client, model=model, reasoning_effort=effort)
    thinking_tokens = got["reasoning"].count("t")
    if limit is not None and limit < 3000:
        assert thinking_tokens <= limit and thinking_tokens >= limit - 1
        assert got["applied"]["truncated"] is True
    else:
        assert thinking_tokens == 3000  # all of it
        assert got["applied"]["truncated"] is False
    assert got["content"] == "The answer is 42."  # the answer still comes
    assert got["finish"] == "stop"
    assert got["usage"].completion_tokens_details.reasoning_tokens == thinking_tokens
    assert got["applied"]["effort"] == effort and got["applied"]["model_effort"] == "high"
    assert got["applied"]["budget"] == limit
    calls = upstream.requests[before:]
    assert all(c["reasoning_effort"] == "high" for c in calls)
    assert all("thinking_token_budget" not in c for c in calls)
    if got["applied"]["truncated"]:
        assert len(calls) == 2
        cont = calls[1]
        assert cont["continue_final_message"] is True and cont["add_generation_prompt"] is False
        prefix = cont["messages"][-1]
        assert prefix["role"] == "assistant" and prefix["reasoning"] == prefix["reasoning_content"]
        assert prefix["reasoning"].count("t") == thinking_tokens
        assert got["usage"].prompt_tokens == 11  # the request's prompt: not the continuation's (11 + 100) too
    else:
        assert len(calls) == 1


@pytest.mark.parametrize("effort,sent", [("none", "none"), ("minimal", "none")])
def test_no_thinking_levels(client: openai.OpenAI, upstream: ScriptedUpstream, effort: str, sent: str) -> None:
    got = _whole(client, model="short-thinker", reasoning_effort=effort)
    assert upstream.requests[-1]["reasoning_effort"] == sent
    assert got["applied"] == {"effort": effort, "model_effort": "none", "budget": None,
                              "thinking_tokens": got["usage"].completion_tokens_details.reasoning_tokens,
                              "truncated": False}


def test_streamed_and_whole_agree_under_budget(client: openai.OpenAI) -> None:
    a = _stream(client, model="raw-thinker", reasoning_effort="low")
    b = _whole(client, model="raw-thinker", reasoning_effort="low")
    assert (a["reasoning"], a["content"], a["finish"]) == (b["reasoning"], b["content"], b["finish"])


def test_thinking_budget_override_and_header(client: openai.OpenAI) -> None:
    got = _whole(client, model="raw-thinker", reasoning_effort="high", extra_body={"thinking_budget": 100})
    assert got["reasoning"].count("t") == 100
    assert got["header"] == "effort=high; model_effort=high; budget=100; thinking_tokens=100; truncated=true"


def test_budget_leaving_no_room_is_length(client: openai.OpenAI) -> None:
    got = _whole(client, model="raw-thinker", reasoning_effort="low", max_tokens=1024)
    assert got["finish"] == "length"
    assert got["content"] == ""
    assert got["usage"].completion_tokens_details.reasoning_tokens == 1024


def test_short_thinking_within_budget_is_one_call(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    before = len(upstream.requests)
    got = _whole(client, model="short-thinker", reasoning_effort="low")
    assert got["reasoning"].count("t") == 50 and got["content"] == "Short."
    assert len(upstream.requests) - before == 1


def test_hidden_reasoning_is_counted_not_sent(gateway: LiveServer) -> None:
    body = {"model": "raw-thinker", "messages": MSG, "reasoning_effort": "low", "include_reasoning": False}
    whole = httpx.post(gateway.base_url + "/chat/completions", json=body, timeout=60)
    assert whole.status_code == 200
    assert '"t t' not in whole.text and "reasoning_content\":null" in whole.text.replace(" ", "")
    assert whole.json()["usage"]["completion_tokens_details"]["reasoning_tokens"] == 1024
    with httpx.stream("POST", gateway.base_url + "/chat/completions", timeout=60,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as r:
        text = "".join(r.iter_text())
    assert "t t" not in text and '"reasoning"' not in text
    last_usage = [json.loads(ln[6:]) for ln in text.splitlines() if ln.startswith("data: {")][-1]["usage"]
    assert last_usage["completion_tokens_details"]["reasoning_tokens"] == 1024


def test_earlier_thinking_is_passed_back(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    history = [*MSG, {"role": "assistant", "content": "42", "reasoning_content": "6*7=42"},
               {"role": "user", "content": "And 6*8?"}]
    client.chat.completions.create(model="short-thinker", messages=history)  # type: ignore[arg-type]
    sent = upstream.requests[-1]["messages"][1]
    assert sent["reasoning"] == sent["reasoning_content"] == "6*7=42"


@pytest.mark.parametrize("body,param", [
    ({"reasoning_effort": "max"}, "reasoning_effort"),
    ({"reasoning_effort": "low", "thinking_budget": 0}, "thinking_budget"),
    ({"reasoning_effort": "none", "thinking_budget": 5}, "thinking_budget"),
    ({"thinking_budget": "lots"}, "thinking_budget"),
    ({"include_reasoning": "maybe"}, "include_reasoning"),
])
def test_invalid_values_are_400(gateway: LiveServer, body: dict[str, Any], param: str) -> None:
    resp = httpx.post(gateway.base_url + "/chat/completions",
                      json={"model": "raw-thinker", "messages": MSG, **body}, timeout=30)
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"
    if param == "reasoning_effort":
        assert all(level in err["message"] for level in ("none", "minimal", "low", "medium", "high"))
