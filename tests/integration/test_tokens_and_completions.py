"""/v1/completions, /tokenize, /detokenize and /v1/messages/count_tokens over real HTTP: the official openai and
anthropic clients against unimodel in front of the scripted upstream, and on the local engine (tiny-random)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import ANSWER, standard_scripts
from tests.support.live_server import LiveServer
from tests.support.scripted_upstream import ScriptedUpstream
from unimodel.compose import build_engine
from unimodel.config import Settings

KEY = "sk-tokens-test"
MSG = [{"role": "user", "content": "What is 2+2?"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
COUNTING = ("/tokenize", "/detokenize", "/v1/messages/count_tokens")


def _root(server: LiveServer) -> str:
    return server.base_url[: -len("/v1")]


def _gateway(upstream: ScriptedUpstream, **settings: Any) -> LiveServer:
    s = Settings(engine="upstream", upstream=upstream.base_url, upstream_connect_timeout_s=1.0, **settings)
    return LiveServer(s, build_engine(s))


@pytest.fixture(scope="module")
def gateway(scripted_upstream: ScriptedUpstream) -> Iterator[LiveServer]:
    with _gateway(scripted_upstream, api_keys=[KEY]) as server:
        yield server


def _post(server: LiveServer, path: str, body: dict[str, Any], key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(_root(server) + path, json=body, headers=headers, timeout=60)


# ---- in front of an upstream ------------------------------------------------------------------------------

def test_completions_through_the_openai_client(gateway: LiveServer, scripted_upstream: ScriptedUpstream) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0, timeout=30)
    whole = client.completions.create(model="raw-think", prompt="Once upon a time", max_tokens=50, temperature=0)
    sent = scripted_upstream.requests[-1]
    assert sent["prompt"] == "Once upon a time" and "messages" not in sent and sent["max_tokens"] == 50
    assert whole.object == "text_completion" and whole.id.startswith("cmpl-")
    # no reasoning parsing: the model's markers are text, as vLLM's /v1/completions gives them
    assert whole.choices[0].text.startswith("[THINK]") and whole.choices[0].text.endswith(ANSWER)
    assert whole.choices[0].finish_reason == "stop" and whole.usage is not None and whole.usage.prompt_tokens > 0
    chunks = list(client.completions.create(model="raw-think", prompt="Once upon a time", max_tokens=50,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("cmpl-")
    echoed = client.completions.create(model="raw-plain", prompt="Q: ", echo=True, max_tokens=5)
    assert echoed.choices[0].text == "Q: " + ANSWER
    assert client.completions.create(model="raw-plain", prompt="x").choices[0].text == ANSWER
    assert scripted_upstream.requests[-1]["max_tokens"] == 16  # the API's default


def test_completions_refusals_are_400s_naming_the_field(gateway: LiveServer) -> None:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=KEY, max_retries=0, timeout=30)
    for kwargs, param in (({"prompt": ["a", "b"]}, "prompt"), ({"prompt": "a", "suffix": "b"}, "suffix"),
                          ({"prompt": "a", "n": 2}, "n"), ({"prompt": [1, 2]}, "prompt")):
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model="raw-plain", **kwargs)  # type: ignore[call-overload]
        assert caught.value.body["param"] == param  # type: ignore[index]


def test_tokenize_asks_the_upstream_with_what_chat_would_send(gateway: LiveServer,
                                                              scripted_upstream: ScriptedUpstream) -> None:
    plain = _post(gateway, "/tokenize", {"model": "raw-plain", "messages": MSG})
    assert plain.status_code == 200 and plain.headers["x-unimodel-token-count"] == "exact"
    path, sent = scripted_upstream.token_requests[-1]
    assert path == "/tokenize" and sent["messages"] == MSG and sent["model"] == "raw-plain"
    body = plain.json()
    assert body["tokens"] == ScriptedUpstream.tokenize(sent) and body["count"] == len(body["tokens"])
    assert body["max_model_len"] == 32768
    with_tools = _post(gateway, "/tokenize", {"model": "raw-plain", "messages": MSG, "tools": [TOOL],
                                              "return_token_strs": True}).json()
    assert with_tools["count"] > body["count"] and len(with_tools["token_strs"]) == with_tools["count"]
    prompt = _post(gateway, "/tokenize", {"model": "raw-plain", "prompt": "hello"}).json()
    assert prompt["tokens"] == [1, *map(ord, "hello")]
    back = _post(gateway, "/detokenize", {"model": "raw-plain", "tokens": prompt["tokens"][1:]})
    assert back.status_code == 200 and back.json() == {"prompt": "hello"}
    unknown = _post(gateway, "/tokenize", {"model": "nope", "prompt": "x"})
    assert unknown.status_code == 404


def test_count_tokens_through_the_anthropic_client(gateway: LiveServer) -> None:
    client = anthropic.Anthropic(base_url=_root(gateway), api_key=KEY, max_retries=0, timeout=30)
    bare = client.messages.count_tokens(model="raw-plain", messages=[{"role": "user", "content": "Hi"}])
    fuller = client.messages.count_tokens(
        model="raw-plain", system="You are terse.", messages=[{"role": "user", "content": "Hi"}],
        tools=[{"name": "get_weather", "description": "The weather", "input_schema": {"type": "object"}}])
    assert 0 < bare.input_tokens < fuller.input_tokens  # the system prompt and the tools count
    raw = _post(gateway, "/v1/messages/count_tokens?beta=true",
                {"model": "raw-plain", "messages": [{"role": "user", "content": "Hi"}]})
    assert raw.json() == {"input_tokens": bare.input_tokens} and raw.headers["x-unimodel-token-count"] == "exact"
    bad = _post(gateway, "/v1/messages/count_tokens", {"model": "raw-plain", "messages": []})
    assert bad.status_code == 400 and bad.json()["type"] == "error"  # Anthropic's error body


def test_every_route_needs_a_key(gateway: LiveServer) -> None:
    bodies = {"/v1/completions": {"model": "raw-plain", "prompt": "x"},
              "/tokenize": {"model": "raw-plain", "prompt": "x"},
              "/detokenize": {"model": "raw-plain", "tokens": [104]},
              "/v1/messages/count_tokens": {"model": "raw-plain", "messages": [{"role": "user", "content": "x"}]}}
    for path, body in bodies.items():
        assert _post(gateway, path, body, key=None).status_code == 401, path
        assert _post(gateway, path, body, key="wrong").status_code == 401, path
        assert _post(gateway, path, body).status_code == 200, path


def test_an_upstream_without_tokenize_is_estimated_and_asked_once() -> None:
    with ScriptedUpstream(standard_scripts()) as upstream:
        upstream.token_endpoints = False
        with _gateway(upstream) as server:
            for _ in range(2):
                answer = _post(server, "/tokenize", {"model": "raw-plain", "messages": MSG})
                assert answer.status_code == 200 and answer.headers["x-unimodel-token-count"] == "estimate"
                assert answer.json()["tokens"] is None and answer.json()["count"] > 0
            assert [p for p, _ in upstream.token_requests] == ["/tokenize"]  # the 404 is remembered
            refused = _post(server, "/detokenize", {"model": "raw-plain", "tokens": [1]})
            assert refused.status_code == 400 and refused.json()["error"]["code"] == "unsupported_feature"


def test_a_keys_requests_per_minute_are_shared_by_chat_completions_and_counting(
        scripted_upstream: ScriptedUpstream) -> None:
    with _gateway(scripted_upstream, api_keys=[KEY], rpm=2) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=30)
        client.chat.completions.create(model="raw-plain", messages=MSG)  # type: ignore[arg-type]
        client.completions.create(model="raw-plain", prompt="x")
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="raw-plain", prompt="x")
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="raw-plain", messages=MSG)  # type: ignore[arg-type]
        assert _post(server, "/tokenize", {"model": "raw-plain", "prompt": "x"}).status_code == 429
    with _gateway(scripted_upstream, api_keys=[KEY], rpm=1) as server:
        assert _post(server, "/tokenize", {"model": "raw-plain", "prompt": "x"}).status_code == 200
        client = openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=30)
        with pytest.raises(openai.RateLimitError):
            client.completions.create(model="raw-plain", prompt="x")


# ---- on the local engine --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def local(tiny_cache_dir: Path) -> Iterator[LiveServer]:
    s = Settings(engine="local", model="tiny-random", cache_dir=tiny_cache_dir, device="cpu", dtype="float32",
                 max_num_seqs=2)
    with LiveServer(s, build_engine(s)) as server:
        yield server


def test_local_tokenize_is_the_prompt_chat_renders(local: LiveServer) -> None:
    client = openai.OpenAI(base_url=local.base_url, api_key="x", max_retries=0, timeout=120)
    for extra in ({}, {"tools": [TOOL]}):
        counted = _post(local, "/tokenize", {"model": "tiny-random", "messages": MSG, **extra}, key=None)
        assert counted.status_code == 200 and counted.headers["x-unimodel-token-count"] == "exact"
        chat = client.chat.completions.create(model="tiny-random", messages=MSG, max_tokens=1,  # type: ignore[arg-type]
                                              **extra)  # type: ignore[arg-type]
        assert chat.usage is not None and counted.json()["count"] == chat.usage.prompt_tokens
        assert counted.json()["count"] == len(counted.json()["tokens"])
    anthropic_count = anthropic.Anthropic(base_url=_root(local), api_key="x", max_retries=0).messages.count_tokens(
        model="tiny-random", messages=MSG)  # type: ignore[arg-type]
    assert anthropic_count.input_tokens == _post(local, "/tokenize", {"model": "tiny-random", "messages": MSG},
                                                 key=None).json()["count"]


def test_local_prompt_tokens_round_trip(local: LiveServer) -> None:
    text = "Hello, wörld! 🎉"
    counted = _post(local, "/tokenize", {"prompt": text, "add_special_tokens": False, "return_token_strs": True},
                    key=None).json()
    with_bos = _post(local, "/tokenize", {"prompt": text}, key=None).json()
    assert with_bos["count"] == counted["count"] + 1 and len(counted["token_strs"]) == counted["count"]
    back = _post(local, "/detokenize", {"model": "tiny-random", "tokens": counted["tokens"]}, key=None)
    assert back.json() == {"prompt": text}
    out_of_range = _post(local, "/detokenize", {"model": "tiny-random", "tokens": [1, 10**9]}, key=None)
    assert out_of_range.status_code == 400 and out_of_range.json()["error"]["param"] == "tokens"


def test_local_completions_stream_and_not(local: LiveServer) -> None:
    client = openai.OpenAI(base_url=local.base_url, api_key="x", max_retries=0, timeout=120)
    whole = client.completions.create(model="tiny-random", prompt="The sky is", max_tokens=8, temperature=0)
    streamed = list(client.completions.create(model="tiny-random", prompt="The sky is", max_tokens=8,
                                              temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == whole.choices[0].text
    assert whole.usage is not None and 0 < whole.usage.completion_tokens <= 8
    prompt_count = _post(local, "/tokenize", {"prompt": "The sky is"}, key=None).json()["count"]
    assert whole.usage.prompt_tokens == prompt_count  # the raw prompt, BOS and all, no template around it
    assert streamed[-1].usage is not None and streamed[-1].usage.prompt_tokens == prompt_count


def test_local_completions_with_logprobs(local: LiveServer) -> None:
    client = openai.OpenAI(base_url=local.base_url, api_key="x", max_retries=0, timeout=120)
    whole = client.completions.create(model="tiny-random", prompt="The sky is", max_tokens=6, temperature=0,
                                      logprobs=2)
    lp = whole.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs and lp.text_offset is not None
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert all(len(top) <= 2 for top in lp.top_logprobs)  # type: ignore[arg-type]
    streamed = [c for c in client.completions.create(model="tiny-random", prompt="The sky is", max_tokens=6,
                                                     temperature=0, logprobs=2, stream=True) if c.choices]
    tokens = [t for c in streamed if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens or []]
    assert tokens == lp.tokens
