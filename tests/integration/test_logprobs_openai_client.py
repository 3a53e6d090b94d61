"""The official openai client reads what unimodel adds of vLLM's chat fields: ``choice.logprobs.content[i]
.top_logprobs`` (streamed and not, on the embedded engine and through an upstream), ``usage.prompt_tokens_details
.cached_tokens``, and ``priority`` forwarded only for a key whose policy allows it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.live_server import LiveServer
from tests.support.scripted_upstream import Script, ScriptedUpstream, token_logprob
from unimodel.compose import build_engine
from unimodel.config import Settings
from unimodel.gateway.keyhash import hash_key
from unimodel.gateway.policy import KeyPolicy

MSG: Any = [{"role": "user", "content": "Say hello."}]
BATCH_KEY, PLAIN_KEY = "sk-test-batch-key", "sk-test-plain-key"


def _client(server: LiveServer, key: str = "x") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def local(tiny_cache_dir: Path) -> Iterator[LiveServer]:
    settings = Settings(engine="local", model="tiny-random", cache_dir=tiny_cache_dir, device="cpu", dtype="float32",
                        max_num_seqs=2)
    with LiveServer(settings, build_engine(settings)) as server:
        yield server


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    scripts = {"thinker": Script(mode="raw", reasoning="Let me see.", content="Hello there!", cached_tokens=8),
               "parsed": Script(mode="parsed", reasoning="Let me see.", content="Hello there!")}
    with ScriptedUpstream(scripts) as up:
        yield up


@pytest.fixture(scope="module")
def gateway(upstream: ScriptedUpstream) -> Iterator[LiveServer]:
    keys = [KeyPolicy(name="batch", key_hash=hash_key(BATCH_KEY, n=2), priority={"min": 0, "max": 10}),  # type: ignore[arg-type]
            KeyPolicy(name="plain", key_hash=hash_key(PLAIN_KEY, n=2))]
    settings = Settings(engine="upstream", upstream=upstream.base_url, keys=keys)
    with LiveServer(settings, build_engine(settings)) as server:
        yield server


def test_the_sdk_reads_the_embedded_engines_logprobs(local: LiveServer) -> None:
    with _client(local) as client:
        whole = client.chat.completions.create(model="tiny-random", messages=MSG, max_tokens=6, temperature=0,
                                               logprobs=True, top_logprobs=2)
        content = whole.choices[0].logprobs.content  # type: ignore[union-attr]
        assert content is not None and len(content) == whole.usage.completion_tokens  # type: ignore[union-attr]
        for entry in content:
            assert len(entry.top_logprobs) == 2 and entry.top_logprobs[0].token == entry.token
            assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
            assert bytes(entry.bytes or []).decode("utf-8", "replace") == entry.token
        assert whole.usage.prompt_tokens_details.cached_tokens == 0  # type: ignore[union-attr]
        stream = client.chat.completions.create(model="tiny-random", messages=MSG, max_tokens=6, temperature=0,
                                                logprobs=True, top_logprobs=2, stream=True)
        streamed = [e for chunk in stream for c in chunk.choices if c.logprobs and c.logprobs.content
                    for e in c.logprobs.content]
        assert [(e.token, [a.token for a in e.top_logprobs]) for e in streamed] == \
            [(e.token, [a.token for a in e.top_logprobs]) for e in content]


@pytest.mark.parametrize("model", ["thinker", "parsed"])
def test_the_sdk_reads_an_upstreams_logprobs_thinking_hidden_on_request(gateway: LiveServer, model: str) -> None:
    with _client(gateway, PLAIN_KEY) as client:
        whole = client.chat.completions.create(model=model, messages=MSG, logprobs=True, top_logprobs=3,
                                               reasoning_effort="high")  # type: ignore[arg-type]
        tokens = [e.token for e in whole.choices[0].logprobs.content]  # type: ignore[union-attr]
        assert "".join(tokens).endswith("Hello there!</s>") and "Let" in "".join(tokens)
        entry = whole.choices[0].logprobs.content[-2]  # type: ignore[union-attr]
        expected = token_logprob(entry.token, 3)
        assert [(a.token, a.logprob) for a in entry.top_logprobs] == \
            [(a["token"], a["logprob"]) for a in expected["top_logprobs"]]
        hidden = client.chat.completions.create(model=model, messages=MSG, logprobs=True, reasoning_effort="high",  # type: ignore[arg-type]
                                                stream=True, extra_body={"include_reasoning": False})
        shown = "".join(e.token for chunk in hidden for c in chunk.choices if c.logprobs and c.logprobs.content
                        for e in c.logprobs.content)
        assert shown == "Hello there!</s>"  # not a thinking token, nor a marker


def test_cached_tokens_and_priority_reach_the_client_and_the_upstream(gateway: LiveServer,
                                                                       upstream: ScriptedUpstream) -> None:
    with _client(gateway, BATCH_KEY) as batch, _client(gateway, PLAIN_KEY) as plain:
        answer = batch.chat.completions.create(model="thinker", messages=MSG, extra_body={"priority": 7})
        assert answer.usage.prompt_tokens_details.cached_tokens == 8  # type: ignore[union-attr]
        assert upstream.requests[-1]["priority"] == 7
        with pytest.raises(openai.BadRequestError) as refused:  # outside the key's range
            batch.chat.completions.create(model="thinker", messages=MSG, extra_body={"priority": -1})
        assert refused.value.body["param"] == "priority"  # type: ignore[index]
        sent = len(upstream.requests)
        plain.chat.completions.create(model="thinker", messages=MSG, extra_body={"priority": -100})
        assert len(upstream.requests) == sent + 1 and "priority" not in upstream.requests[-1]  # dropped
