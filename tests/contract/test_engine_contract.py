"""The same requests over every engine: well-formed responses of the same shape, errors included."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.contract.conftest import Served
from tests.support.flush_rules import check_flush_rules
from tests.support.requests import gen_request
from unimodel.protocol.events import Event, Finish, Flush

FINISH = {"stop", "length", "tool_calls"}
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look a word up",
                                           "parameters": {"type": "object",
                                                          "properties": {"q": {"type": "string"}}}}}]


def _post(served: Served, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(served.base_url + "/chat/completions", json={"model": served.model, **body}, timeout=120)


def _sse(served: Served, body: dict[str, Any]) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    with httpx.stream("POST", served.base_url + "/chat/completions", timeout=120,
                      json={"model": served.model, "stream": True, **body}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in resp.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    for ln in lines[:-1]:
        assert ln.startswith("data: ")
        frames.append(json.loads(ln[6:]))
    return frames


def _check_usage(usage: dict[str, Any]) -> None:
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] > 0
    details = usage["completion_tokens_details"]["reasoning_tokens"]
    assert 0 <= details <= usage["completion_tokens"] or usage["completion_tokens"] == 0


def _fold(frames: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"content": "", "reasoning": "", "calls": {}, "finish": None}
    for f in frames:
        for c in f["choices"]:
            d = c["delta"]
            out["content"] += d.get("content") or ""
            out["reasoning"] += d.get("reasoning") or ""
            for tc in d.get("tool_calls") or []:
                call = out["calls"].setdefault(tc["index"], {"name": "", "arguments": ""})
                call["name"] += tc.get("function", {}).get("name") or ""
                call["arguments"] += tc.get("function", {}).get("arguments") or ""
            out["finish"] = c["finish_reason"] or out["finish"]
    return out


MSG = [{"role": "user", "content": "Say hello."}]


def test_completion_shape(served: Served) -> None:
    resp = _post(served, {"messages": MSG, "max_tokens": 32, "temperature": 0})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == served.model and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] in FINISH
    msg = choice["message"]
    assert msg["role"] == "assistant"
    assert isinstance(msg["content"], str)
    assert msg["reasoning"] == msg["reasoning_content"]
    _check_usage(body["usage"])


def test_stream_shape_and_usage(served: Served) -> None:
    frames = _sse(served, {"messages": MSG, "max_tokens": 32, "temperature": 0,
                           "stream_options": {"include_usage": True}})
    ids = {f["id"] for f in frames}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    assert all(f["object"] == "chat.completion.chunk" for f in frames)
    assert frames[0]["choices"][0]["delta"]["role"] == "assistant"
    finishes = [c["finish_reason"] for f in frames for c in f["choices"] if c["finish_reason"]]
    assert len(finishes) == 1 and finishes[0] in FINISH
    assert frames[-1]["choices"] == [] and frames[-1]["usage"] is not None
    assert all(f["usage"] is None for f in frames[:-1])
    _check_usage(frames[-1]["usage"])


def test_stream_folds_to_completion(served: Served) -> None:
    body = {"messages": MSG, "max_tokens": 32, "temperature": 0, "seed": 7}
    whole = _post(served, body).json()["choices"][0]
    folded = _fold(_sse(served, body))
    assert folded["content"] == (whole["message"]["content"] or "")
    assert folded["reasoning"] == (whole["message"]["reasoning"] or "")
    assert folded["finish"] == whole["finish_reason"]


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_the_engine_flushes_by_the_rules(served: Served, stream: bool) -> None:
    """Flush is every engine's contract (``protocol/events.py``): never first, never two in a row, and at least
    one in a streamed answer; the one ``Finish`` comes last of the other events."""
    request = gen_request(f"chatcmpl-flush-{stream}", served.model,
                          {"model": served.model, "messages": MSG, "max_tokens": 24, "temperature": 0,
                           "stream": stream}, max_tokens=24)

    async def events() -> list[Event]:
        return [e async for e in served.server.engine.generate(request)]

    got = served.server.run(events())
    batches = check_flush_rules(got)
    assert any(isinstance(e, Flush) for e in got) or not stream, got
    others = [e for batch in batches for e in batch]
    assert isinstance(others[-1], Finish) and sum(isinstance(e, Finish) for e in others) == 1


def test_n_choices_whole_and_streamed(served: Served) -> None:
    """``n`` on every engine (the choices stage runs one generation per choice): as many choices as asked, by
    index, each its own finish; streamed, each choice's own role chunk and finish chunk, one usage at the end."""
    body = {"messages": MSG, "max_tokens": 16, "temperature": 0, "n": 2}
    resp = _post(served, body)
    assert resp.status_code == 200, resp.text
    whole = resp.json()
    assert [c["index"] for c in whole["choices"]] == [0, 1]
    assert all(c["finish_reason"] in FINISH for c in whole["choices"])
    assert whole["choices"][0]["message"] == whole["choices"][1]["message"]  # greedy: the same answer twice
    _check_usage(whole["usage"])
    frames = _sse(served, {**body, "stream_options": {"include_usage": True}})
    by_index: dict[int, list[dict[str, Any]]] = {}
    for f in frames:
        for c in f["choices"]:
            by_index.setdefault(c["index"], []).append(c)
    assert sorted(by_index) == [0, 1]
    for index, choices in by_index.items():
        assert choices[0]["delta"]["role"] == "assistant"
        assert [c["finish_reason"] for c in choices if c["finish_reason"]] == \
            [whole["choices"][index]["finish_reason"]]
    assert frames[-1]["choices"] == [] and frames[-1]["usage"] == whole["usage"]
    assert all(f["usage"] is None for f in frames[:-1])


def test_tools_request_is_well_formed(served: Served) -> None:
    body = _post(served, {"messages": MSG, "tools": TOOLS, "max_tokens": 32, "temperature": 0}).json()
    choice = body["choices"][0]
    for call in choice["message"].get("tool_calls") or []:
        assert call["type"] == "function" and call["id"]
        json.loads(call["function"]["arguments"])
    if choice["message"].get("tool_calls"):
        assert choice["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("effort", ["none", "minimal", "low", "medium", "high"])
def test_every_reasoning_effort_is_accepted(served: Served, effort: str) -> None:
    resp = _post(served, {"messages": MSG, "max_tokens": 16, "reasoning_effort": effort})
    assert resp.status_code == 200, resp.text


@pytest.mark.parametrize("body,status,param", [
    ({"messages": []}, 400, "messages"),
    ({"messages": MSG, "temperature": -1}, 400, "temperature"),
    ({"messages": MSG, "model": "no-such-model"}, 404, "model"),
    ({"messages": MSG, "max_tokens": 10_000_000}, 400, "max_tokens"),
    ({"messages": MSG, "logprobs": False, "top_logprobs": 2}, 400, "top_logprobs"),  # top needs logprobs true
    ({"messages": MSG, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    ({"messages": MSG, "seed": 2**70}, 400, "seed"),  # was a 500 from torch on the local engine
    ({"messages": MSG, "n": 9}, 400, "n"),  # above --max-n (8)
    ({"messages": MSG, "n": 0}, 400, "n"),
])
def test_errors_have_the_same_shape(served: Served, body: dict[str, Any], status: int, param: str) -> None:
    payload = {"model": served.model, **body}
    resp = httpx.post(served.base_url + "/chat/completions", json=payload, timeout=60)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param
