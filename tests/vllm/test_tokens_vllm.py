"""Our /tokenize, /detokenize and /v1/completions beside real vLLM's, on tiny-scripted: through ``--engine
upstream`` (asked of vLLM's own endpoints) and on the local engine (our renderer and tokenizer), the same tokens
and the same greedy text as vLLM alone gives."""

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

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather of a place",
                                           "parameters": PARAMS}}]
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def fronts(vllm_servers: VllmServers, scripted_checkpoint: Path) -> Iterator[dict[str, str]]:
    servers: list[LiveServer] = []
    urls = {"vllm": vllm_servers.raw.base_url.rstrip("/").removesuffix("/v1")}
    try:
        for name, settings in (
                ("upstream", Settings(engine="upstream", upstream=vllm_servers.raw.base_url)),
                ("local", Settings(engine="local", model=str(scripted_checkpoint), served_model_name=SERVED_NAME,
                                   device="cpu", dtype="float32", max_num_seqs=2, max_model_len=1024))):
            server = LiveServer(settings, build_engine(settings))
            server.__enter__()
            servers.append(server)
            urls[name] = server.base_url.removesuffix("/v1")
        yield urls
    finally:
        for server in servers:
            server.__exit__(None, None, None)


def post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = httpx.post(url, json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


@pytest.mark.parametrize("tools", [None, TOOLS], ids=["plain", "tools"])
def test_tokenize_gives_vllms_tokens_for_a_chat(fronts: dict[str, str], tools: Any) -> None:
    extra = {"tools": tools} if tools else {}
    direct = post(fronts["vllm"] + "/tokenize", {"model": SERVED_NAME, "messages": MESSAGES, **extra,
                                                  "chat_template_kwargs": {"reasoning_effort": "none"}})
    for front in ("upstream", "local"):
        ours = post(fronts[front] + "/tokenize", {"model": SERVED_NAME, "messages": MESSAGES, **extra,
                                                  "reasoning_effort": "none"})
        assert ours["tokens"] == direct["tokens"], front
        assert (ours["count"], ours["max_model_len"]) == (direct["count"], direct["max_model_len"]), front
    # and it is the prompt vLLM's chat reads: the count is its usage's prompt_tokens
    chat = post(fronts["vllm"] + "/v1/chat/completions", {"model": SERVED_NAME, "messages": MESSAGES, **extra,
                                                           "reasoning_effort": "none", "max_tokens": 1})
    assert chat["usage"]["prompt_tokens"] == direct["count"]


def test_prompt_tokens_and_detokenize_match_vllm(fronts: dict[str, str]) -> None:
    for special in (True, False):
        body = {"model": SERVED_NAME, "prompt": "Hello wörld [INST] 🎉", "add_special_tokens": special,
                "return_token_strs": True}
        direct = post(fronts["vllm"] + "/tokenize", body)
        for front in ("upstream", "local"):
            ours = post(fronts[front] + "/tokenize", body)
            assert (ours["tokens"], ours["token_strs"]) == (direct["tokens"], direct["token_strs"]), front
    tokens = direct["tokens"]
    text = post(fronts["vllm"] + "/detokenize", {"model": SERVED_NAME, "tokens": tokens})
    for front in ("upstream", "local"):
        assert post(fronts[front] + "/detokenize", {"model": SERVED_NAME, "tokens": tokens}) == text, front


@pytest.mark.parametrize("stream", [False, True])
def test_completions_give_vllms_greedy_text(fronts: dict[str, str], stream: bool) -> None:
    body = {"model": SERVED_NAME, "prompt": "[INST]weather[/INST]", "max_tokens": 24, "temperature": 0}

    def complete(url: str) -> tuple[str, dict[str, Any]]:
        if not stream:
            answer = post(url + "/v1/completions", body)
            return answer["choices"][0]["text"], answer["usage"]
        text, usage = "", {}
        with httpx.stream("POST", url + "/v1/completions", timeout=120,
                          json={**body, "stream": True, "stream_options": {"include_usage": True}}) as resp:
            assert resp.status_code == 200
            for line in resp.iter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    assert chunk["object"] == "text_completion"
                    text += "".join(c["text"] for c in chunk["choices"])
                    usage = chunk.get("usage") or usage
        return text, usage

    direct_text, direct_usage = complete(fronts["vllm"])
    for front in ("upstream", "local"):
        text, usage = complete(fronts[front])
        assert text == direct_text, front
        assert (usage["prompt_tokens"], usage["completion_tokens"]) == (
            direct_usage["prompt_tokens"], direct_usage["completion_tokens"]), front
