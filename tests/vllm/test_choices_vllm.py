"""vLLM judges ``n``: the same seeded ``n=3`` request to vLLM alone and through unimodel (in front of vLLM with its
parsers, and of a stock vLLM whose raw text we parse) gives the same choices, each with vLLM's answer and finish,
and the same usage (the prompt counted once, the completions summed); streamed, each choice opens with its own
role chunk and closes with its own finish chunk, and the usage chunk comes last, as vLLM sends them.
(tiny-scripted's logits are so peaked that every seed samples its script: the seeds themselves, ``seed + i`` as
vLLM gives its parallel samples, are checked by the unit and integration tests.)

One difference, named by a test: vLLM refuses ``n`` > 1 with greedy sampling (``temperature: 0``, a 400); we
answer as OpenAI does, ``n`` equal choices (the embedded engine too).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.live_server import LiveServer
from tests.support.vllm_server import SERVED_NAME, VllmServers
from unimodel.compose import build_engine
from unimodel.config import Settings
from unimodel.models.scripted import script

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

FRONTS = [("upstream>parsed", "upstream", "parsed"), ("auto>raw", "auto", "raw"), ("local", "", "")]
TOOLS = [{"type": "function", "function": {"name": name, "description": f"{name} of a place",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}
         for name in ("get_weather", "get_time", "lookup")]
N = 3


@pytest.fixture(scope="module")
def fronts(vllm_servers: VllmServers, scripted_checkpoint: Path) -> Iterator[dict[str, str]]:
    servers: list[LiveServer] = []
    urls: dict[str, str] = {"vllm": vllm_servers.parsed.base_url}
    try:
        for name, mode, which in FRONTS:
            if name == "local":
                settings = Settings(engine="local", model=str(scripted_checkpoint), served_model_name=SERVED_NAME,
                                    device="cpu", dtype="float32", max_num_seqs=N)
            else:
                settings = Settings(engine="upstream", upstream=getattr(vllm_servers, which).base_url,
                                    upstream_parse=mode)
            server = LiveServer(settings, build_engine(settings))
            server.__enter__()
            servers.append(server)
            urls[name] = server.base_url
        yield urls
    finally:
        for server in servers:
            server.__exit__(None, None, None)


def body_for(name: str, **extra: Any) -> dict[str, Any]:
    return {"model": SERVED_NAME, "messages": [{"role": "user", "content": script(name).prompt}],
            "temperature": 0, "max_tokens": 64, "tools": TOOLS, "n": N, **extra}


def answer(message: dict[str, Any]) -> tuple[Any, ...]:
    calls = tuple((c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or [])
    return message.get("content") or "", message.get("reasoning") or "", calls


def whole(url: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = httpx.post(url + "/chat/completions", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()


def streamed(url: str, body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[int, tuple[Any, ...]]]:
    """The stream's frames, and each choice folded (content, reasoning, calls, finish reasons)."""
    frames: list[dict[str, Any]] = []
    with httpx.stream("POST", url + "/chat/completions", timeout=120,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                frames.append(json.loads(line[6:]))
    folded: dict[int, dict[str, Any]] = {}
    for frame in frames:
        for c in frame["choices"]:
            f = folded.setdefault(c["index"], {"content": "", "reasoning": "", "calls": {}, "finish": []})
            delta = c["delta"]
            f["content"] += delta.get("content") or ""
            f["reasoning"] += delta.get("reasoning") or ""
            for tc in delta.get("tool_calls") or []:
                call = f["calls"].setdefault(tc["index"], ["", ""])
                call[0] += (tc.get("function") or {}).get("name") or ""
                call[1] += (tc.get("function") or {}).get("arguments") or ""
            if c["finish_reason"]:
                f["finish"].append(c["finish_reason"])
    return frames, {i: (f["content"], f["reasoning"], tuple(tuple(v) for _, v in sorted(f["calls"].items())),
                        tuple(f["finish"])) for i, f in folded.items()}


def counts(usage: dict[str, Any]) -> tuple[int, int, int]:
    return usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]


@pytest.mark.parametrize("name", ["think", "tool"])
@pytest.mark.parametrize("front", ["upstream>parsed", "auto>raw"])
def test_seeded_choices_match_vllms(fronts: dict[str, str], front: str, name: str) -> None:
    """vLLM seeds choice i with ``seed + i``; so do we, one upstream request per choice: the same choices."""
    body = body_for(name, temperature=1.0, seed=1234)
    expected, got = whole(fronts["vllm"], body), whole(fronts[front], body)
    assert [c["index"] for c in got["choices"]] == list(range(N))
    assert [(answer(c["message"]), c["finish_reason"]) for c in got["choices"]] == \
        [(answer(c["message"]), c["finish_reason"]) for c in expected["choices"]]
    assert counts(got["usage"]) == counts(expected["usage"])  # the prompt once, the completions summed

    vllm_frames, vllm_folded = streamed(fronts["vllm"], body)
    frames, folded = streamed(fronts[front], body)
    assert folded == vllm_folded
    for index in range(N):  # each choice's first chunk has the role, as vLLM's do
        first = next(c for f in frames for c in f["choices"] if c["index"] == index)
        assert first["delta"].get("role") == "assistant"
    assert frames[-1]["choices"] == [] and counts(frames[-1]["usage"]) == counts(vllm_frames[-1]["usage"])


@pytest.mark.parametrize("front", [f[0] for f in FRONTS])
def test_greedy_choices_are_n_copies_of_vllms_one_answer(fronts: dict[str, str], front: str) -> None:
    """Where vLLM refuses ``n`` > 1 with greedy sampling (a 400), we answer as OpenAI does: ``n`` equal choices."""
    body = body_for("think")
    refused = httpx.post(fronts["vllm"] + "/chat/completions", json=body, timeout=120)
    assert refused.status_code == 400 and "greedy" in refused.text  # the difference, named
    one = whole(fronts["vllm"], {**body, "n": 1})
    got = whole(fronts[front], body)
    [(expected, reason)] = [(answer(c["message"]), c["finish_reason"]) for c in one["choices"]]
    assert [(answer(c["message"]), c["finish_reason"]) for c in got["choices"]] == [(expected, reason)] * N
    prompt, completion, _ = counts(one["usage"])
    assert counts(got["usage"]) == (prompt, N * completion, prompt + N * completion)
    _, folded = streamed(fronts[front], body)
    assert folded == {i: (*expected, (reason,)) for i in range(N)}
