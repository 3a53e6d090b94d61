"""``logprobs``/``top_logprobs`` on every engine: OpenAI's and vLLM's shape, streamed and not, the same entries both
ways; none when not asked."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.contract.conftest import Served

MSG = [{"role": "user", "content": "Say hello."}]


def _post(served: Served, body: dict[str, Any]) -> dict[str, Any]:
    resp = httpx.post(served.base_url + "/chat/completions", json={"model": served.model, **body}, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _chunks(served: Served, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", served.base_url + "/chat/completions", timeout=120,
                      json={"model": served.model, "stream": True, **body}) as resp:
        assert resp.status_code == 200
        lines = [ln for ln in resp.iter_lines() if ln]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(ln[6:]) for ln in lines[:-1]]


def _check_entry(entry: dict[str, Any], top: int) -> None:
    assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
    assert isinstance(entry["token"], str) and isinstance(entry["logprob"], float) and entry["logprob"] <= 0.0
    assert entry["bytes"] is None or all(isinstance(b, int) and 0 <= b < 256 for b in entry["bytes"])
    assert len(entry["top_logprobs"]) == top
    for alt in entry["top_logprobs"]:
        assert set(alt) == {"token", "logprob", "bytes"} and alt["logprob"] <= 0.0


BODY = {"messages": MSG, "max_tokens": 16, "temperature": 0, "logprobs": True, "top_logprobs": 3}


def test_every_token_has_an_entry_in_openais_shape(served: Served) -> None:
    body = _post(served, BODY)
    (choice,) = body["choices"]
    content = choice["logprobs"]["content"]
    assert content, choice
    for entry in content:
        _check_entry(entry, 3)
        # greedy: the token chosen is the likeliest, listed first (vLLM lists the chosen one first anyway)
        assert entry["top_logprobs"][0]["token"] == entry["token"]
        assert entry["top_logprobs"][0]["logprob"] == pytest.approx(entry["logprob"])
    if served.kind != "upstream":  # one entry per generated token, the stop token included (vLLM's count)
        assert len(content) == body["usage"]["completion_tokens"]


def test_the_stream_carries_the_same_entries(served: Served) -> None:
    whole = _post(served, BODY)["choices"][0]["logprobs"]["content"]
    chunks = _chunks(served, BODY)
    joined = [e for c in chunks for ch in c["choices"] for e in ((ch["logprobs"] or {}).get("content") or [])]
    assert [e["token"] for e in joined] == [e["token"] for e in whole]
    assert [e["logprob"] for e in joined] == pytest.approx([e["logprob"] for e in whole], abs=1e-4)


def test_top_logprobs_zero_gives_entries_without_alternatives(served: Served) -> None:
    content = _post(served, {**BODY, "top_logprobs": 0})["choices"][0]["logprobs"]["content"]
    assert content and all(e["top_logprobs"] == [] for e in content)
    content = _post(served, {**BODY, "top_logprobs": 20, "max_tokens": 4})["choices"][0]["logprobs"]["content"]
    assert content and all(len(e["top_logprobs"]) == 20 for e in content)


def test_not_asked_means_no_logprobs(served: Served) -> None:
    plain = {k: v for k, v in BODY.items() if k not in ("logprobs", "top_logprobs")}
    assert _post(served, plain)["choices"][0]["logprobs"] is None
    assert _post(served, {**plain, "logprobs": False})["choices"][0]["logprobs"] is None
    assert all(ch["logprobs"] is None for c in _chunks(served, plain) for ch in c["choices"])
