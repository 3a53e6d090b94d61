"""``n`` choices through the official openai client, as vLLM serves them: on an upstream (each choice its own
upstream request, seeded ``seed + i``) and on the embedded engine, whole and streamed; the cap as a 400."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.live_server import LiveServer
from tests.support.scripted_upstream import Script, ScriptedUpstream
from unimodel.compose import build_engine
from unimodel.config import Settings

MSG: Any = [{"role": "user", "content": "Say hello."}]


def _client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=60)


def _by_seed(body: dict[str, Any]) -> Script:
    """Each choice's own answer, told by its seed; seed 11 calls a tool."""
    seed = body.get("seed")
    if seed == 11:
        return Script(tool_calls=[("lookup", '{"q": "x"}')], prompt_tokens=11)
    return Script(reasoning="Hmm.", content=f"Answer {seed}.", prompt_tokens=11)


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream({"m": Script(respond=_by_seed)}) as up:
        yield up


@pytest.fixture(scope="module")
def gateway(upstream: ScriptedUpstream) -> Iterator[LiveServer]:
    settings = Settings(engine="upstream", upstream=upstream.base_url, max_n=4)
    with LiveServer(settings, build_engine(settings)) as server:
        yield server


@pytest.fixture(scope="module")
def local(tiny_cache_dir: Path) -> Iterator[LiveServer]:
    settings = Settings(engine="local", model="tiny-random", cache_dir=tiny_cache_dir, device="cpu", dtype="float32",
                        max_num_seqs=2)
    with LiveServer(settings, build_engine(settings)) as server:
        yield server


def _streamed(client: openai.OpenAI, **kw: Any) -> tuple[dict[int, dict[str, Any]], Any]:
    """Each choice's folded stream (its content, reasoning, tool calls, finish reasons, whether its first chunk
    had the role), and the usage chunk's usage."""
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            folded = choices.setdefault(c.index, {"content": "", "reasoning": "", "calls": 0, "finish": [],
                                                  "role_first": c.delta.role == "assistant"})
            folded["content"] += c.delta.content or ""
            folded["reasoning"] += getattr(c.delta, "reasoning", None) or ""
            folded["calls"] += sum(1 for call in c.delta.tool_calls or [] if call.id)  # a call's first delta
            if c.finish_reason:
                folded["finish"].append(c.finish_reason)
    return choices, usage


def test_an_upstream_answers_n_choices_each_its_own_seeded_request(gateway: LiveServer,
                                                                  upstream: ScriptedUpstream) -> None:
    with _client(gateway) as client:
        before = len(upstream.requests)
        whole = client.chat.completions.create(model="m", messages=MSG, n=3, seed=10,
                                               reasoning_effort="high")  # type: ignore[call-overload]
        sent = upstream.requests[before:]
        assert sorted(body["seed"] for body in sent) == [10, 11, 12] and all("n" not in body for body in sent)
        assert [c.index for c in whole.choices] == [0, 1, 2]
        zero, one, two = whole.choices
        assert (zero.message.content, zero.finish_reason) == ("Answer 10.", "stop")
        calls = one.message.tool_calls or []
        assert one.finish_reason == "tool_calls" and calls[0].function.name == "lookup"  # type: ignore[union-attr]
        assert two.message.content == "Answer 12." and getattr(two.message, "reasoning", None) == "Hmm."
        assert whole.usage is not None and whole.usage.prompt_tokens == 11  # the prompt counted once

        streamed, usage = _streamed(client, model="m", messages=MSG, n=3, seed=10, reasoning_effort="high")
        assert sorted(streamed) == [0, 1, 2]
        for i, choice in enumerate(whole.choices):
            got = streamed[i]
            assert got["role_first"] and got["finish"] == [choice.finish_reason]
            assert got["content"] == (choice.message.content or "")
            assert got["calls"] == len(choice.message.tool_calls or [])
        assert usage is not None and usage.model_dump() == whole.usage.model_dump()


def test_without_a_usage_chunk_the_stream_ends_with_the_reasoning_report(gateway: LiveServer) -> None:
    with _client(gateway) as client:
        chunks = list(client.chat.completions.create(model="m", messages=MSG, n=2, seed=10, stream=True,
                                                     reasoning_effort="high"))  # type: ignore[call-overload]
    last = chunks[-1]
    assert last.choices == [] and last.usage is None
    assert (last.model_extra or {})["unimodel_reasoning"]["effort"] == "high"
    finishes = [(c.index, c.finish_reason) for chunk in chunks for c in chunk.choices if c.finish_reason]
    assert sorted(finishes) == [(0, "stop"), (1, "tool_calls")]


def test_an_idempotent_replay_gives_the_same_choices_without_the_upstream(gateway: LiveServer,
                                                                          upstream: ScriptedUpstream) -> None:
    with _client(gateway) as client:
        kw: Any = {"model": "m", "messages": MSG, "n": 2, "seed": 20,
                   "extra_headers": {"Idempotency-Key": uuid.uuid4().hex}}
        first = client.chat.completions.create(**kw)
        calls = len(upstream.requests)
        again = client.chat.completions.create(**kw)
        assert len(upstream.requests) == calls  # replayed from the record
        assert again.model_dump() == first.model_dump() and len(again.choices) == 2
        kw["extra_headers"] = {"Idempotency-Key": uuid.uuid4().hex}  # streamed: a body of its own
        streamed = [_streamed(client, **kw) for _ in range(2)]
        assert len(upstream.requests) == calls + 2
        assert streamed[0] == streamed[1]
        assert [streamed[1][0][i]["content"] for i in (0, 1)] == [c.message.content for c in first.choices]


def test_n_beyond_the_servers_cap_is_a_400_naming_n(gateway: LiveServer) -> None:
    with _client(gateway) as client:
        for n in (5, 129):
            with pytest.raises(openai.BadRequestError) as err:
                client.chat.completions.create(model="m", messages=MSG, n=n)
            assert err.value.body["param"] == "n"  # type: ignore[index]


def test_the_embedded_engine_samples_n_different_choices(local: LiveServer) -> None:
    with _client(local) as client:
        kw: Any = {"model": "tiny-random", "messages": MSG, "max_tokens": 8, "temperature": 1.0, "seed": 5}
        one = client.chat.completions.create(**kw)
        whole = client.chat.completions.create(n=3, **kw)
        assert [c.index for c in whole.choices] == [0, 1, 2]
        assert all(c.finish_reason in ("stop", "length") for c in whole.choices)
        texts = [c.message.content for c in whole.choices]
        assert len(set(texts)) > 1, texts  # seeds 5, 6, 7 of random weights at temperature 1
        assert whole.usage is not None and one.usage is not None
        assert whole.usage.prompt_tokens == one.usage.prompt_tokens  # once, not three times
        assert 3 <= whole.usage.completion_tokens <= 3 * 8

        streamed, usage = _streamed(client, n=3, **kw)
        assert sorted(streamed) == [0, 1, 2]
        assert all(c["role_first"] and len(c["finish"]) == 1 for c in streamed.values())
        assert usage is not None and usage.prompt_tokens == one.usage.prompt_tokens
