"""LocalEngine on tiny-random: batching equals running alone, cancellation frees slots, admission, limits."""

from __future__ import annotations

import dataclasses

import asyncio
import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from unimodel.engines.base import GenerationRequest
from tests.support.flush_rules import check_flush_rules
from tests.support.requests import gen_request
from unimodel.engines.local import LocalEngine
from unimodel.errors import ContextLengthExceededError, OverloadedError, UnsupportedFeatureError
from unimodel.protocol.events import ContentDelta, Event, Finish, Flush, ReasoningDelta, Usage
from unimodel.protocol.openai import ChatCompletionRequest

from .conftest import start_engine

PROMPTS = ["Hello there", "Write a poem about the sea.", "2+2?", "Tell me a long story about a dragon and a cat.",
           "¿Qué tal?", "Summarise: the quick brown fox jumps over the lazy dog, again and again."]


def request(content: str = "Hello", *, max_tokens: int | None = 16, **wire: Any) -> GenerationRequest:
    wire.setdefault("temperature", 0.0)
    req = ChatCompletionRequest(model="tiny-random", messages=[{"role": "user", "content": content}],
                                max_tokens=max_tokens, **wire)
    return gen_request(completion_id="r", served_model="tiny-random", wire=req, max_tokens=max_tokens)


async def collect(engine: LocalEngine, req: GenerationRequest) -> list[Event]:
    return [e async for e in engine.generate(req)]


def text(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, (ContentDelta, ReasoningDelta)))


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture(scope="module")
def small(tiny_cache_dir: Path) -> Iterator[LocalEngine]:
    """One running slot, one queue place, 64 tokens of context."""
    eng = start_engine("tiny-random", tiny_cache_dir, max_num_seqs=1, max_queue=1, max_model_len=64)
    yield eng
    asyncio.run(eng.aclose())


async def test_events_end_with_usage_then_finish(engine: LocalEngine) -> None:
    events = await collect(engine, request(max_tokens=5))
    assert isinstance(events[-1], Finish) and events[-1].reason == "length"
    usage = events[-2]
    assert isinstance(usage, Usage) and usage.completion_tokens == 5 and usage.prompt_tokens > 0
    assert engine.models()[0].id == "tiny-random"


async def test_concurrent_streams_equal_alone(engine: LocalEngine) -> None:
    alone = [await collect(engine, request(p, max_tokens=24)) for p in PROMPTS]
    together = await asyncio.gather(*(collect(engine, request(p, max_tokens=24)) for p in PROMPTS))
    assert [text(e) for e in together] == [text(e) for e in alone]
    assert [e[-2] for e in together] == [e[-2] for e in alone]


async def test_streams_joining_mid_way_equal_alone(engine: LocalEngine) -> None:
    alone = [await collect(engine, request(p, max_tokens=12 + 4 * i)) for i, p in enumerate(PROMPTS)]

    async def late(i: int, p: str) -> list[Event]:
        await asyncio.sleep(0.01 * i)
        return await collect(engine, request(p, max_tokens=12 + 4 * i))

    together = await asyncio.gather(*(late(i, p) for i, p in enumerate(PROMPTS)))
    assert [text(e) for e in together] == [text(e) for e in alone]


async def test_cancelled_stream_frees_its_slot(engine: LocalEngine) -> None:
    gen = engine.generate(request("a very long answer please", max_tokens=5000))
    for _ in range(3):
        await gen.__anext__()
    assert engine.scheduler.num_running == 1
    await gen.aclose()
    await wait_for(lambda: engine.scheduler.num_running == 0)


async def test_cancelled_task_frees_its_slot(engine: LocalEngine) -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.generate(request("go on forever", max_tokens=5000)):
            started.set()

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: engine.scheduler.num_running == 0)


async def test_same_seed_same_output_whatever_the_batch(engine: LocalEngine) -> None:
    sampled = request("Pick a word", max_tokens=16, temperature=1.0, top_p=0.9, seed=1234, top_k=50)
    first = text(await collect(engine, sampled))
    crowd = [collect(engine, request(p, max_tokens=16, temperature=1.0)) for p in PROMPTS]
    results = await asyncio.gather(collect(engine, sampled), *crowd)
    assert text(results[0]) == first
    other = text(await collect(engine, request("Pick a word", max_tokens=16, temperature=1.0, top_p=0.9, seed=99,
                                               top_k=50)))
    assert other != first


async def test_stop_string_ends_the_output(engine: LocalEngine) -> None:
    full = text(await collect(engine, request("Hello there", max_tokens=24)))
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert stop and full.find(stop) > 0
    events = await collect(engine, request("Hello there", max_tokens=24, stop=[stop]))
    assert text(events) == full[: full.find(stop)]
    assert events[-1] == Finish("stop")


async def test_context_length_exceeded_before_work(small: LocalEngine) -> None:
    with pytest.raises(ContextLengthExceededError) as err:
        await collect(small, request("word " * 100))
    assert err.value.param == "messages" and err.value.status_code == 400
    with pytest.raises(ContextLengthExceededError):
        await collect(small, request("hi", max_tokens=60))


async def test_generation_stops_at_the_context_length(small: LocalEngine) -> None:
    events = await collect(small, request("hi", max_tokens=None))
    usage = events[-2]
    assert isinstance(usage, Usage) and usage.prompt_tokens + usage.completion_tokens == 64
    assert events[-1] == Finish("length")


async def test_full_queue_is_overloaded(small: LocalEngine) -> None:
    running = small.generate(request("first", max_tokens=40))
    await running.__anext__()
    waiting = asyncio.create_task(collect(small, request("second", max_tokens=4)))
    await wait_for(lambda: small.scheduler.num_waiting == 1)
    with pytest.raises(OverloadedError) as err:
        await collect(small, request("third"))
    assert err.value.status_code == 503 and err.value.retry_after and "Retry-After" in err.value.headers()
    await running.aclose()
    assert (await waiting)[-1] == Finish("length")


@pytest.fixture(scope="module")
def one_slot(tiny_cache_dir: Path) -> Iterator[LocalEngine]:
    """One running slot, no queue places, a 0.2 s queue timeout, the model's full context."""
    eng = start_engine("tiny-random", tiny_cache_dir, max_num_seqs=1, max_queue=0, queue_timeout_s=0.2)
    yield eng
    asyncio.run(eng.aclose())


async def test_max_queue_zero_still_serves_an_idle_engine(one_slot: LocalEngine) -> None:
    assert (await collect(one_slot, request("hi", max_tokens=3)))[-1] == Finish("length")


async def test_a_request_waits_at_most_the_queue_timeout(one_slot: LocalEngine) -> None:
    running = one_slot.generate(request("first", max_tokens=3000))  # holds the only slot for seconds
    one_slot.scheduler.max_queue = 1
    try:
        await running.__anext__()
        with pytest.raises(OverloadedError) as err:
            await asyncio.wait_for(collect(one_slot, request("second", max_tokens=4)), 10)
        assert "queue-timeout" in err.value.message and err.value.retry_after
        await wait_for(lambda: one_slot.scheduler.num_waiting == 0)  # it left the queue
    finally:
        one_slot.scheduler.max_queue = 0
        await running.aclose()


async def test_a_request_cancelled_while_queued_leaves_the_queue(small: LocalEngine) -> None:
    running = small.generate(request("first", max_tokens=40))
    await running.__anext__()
    waiting = asyncio.create_task(collect(small, request("second", max_tokens=4)))
    await wait_for(lambda: small.scheduler.num_waiting == 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, 10)
    await wait_for(lambda: small.scheduler.num_waiting == 0)
    await running.aclose()
    await wait_for(lambda: small.scheduler.num_running == 0)


async def test_image_for_text_only_model_is_a_400(engine: LocalEngine) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    wire = ChatCompletionRequest(model="tiny-random", messages=[{"role": "user", "content": [
        {"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": uri}}]}])
    with pytest.raises(UnsupportedFeatureError, match="text-only") as err:
        await collect(engine, gen_request("r", "tiny-random", wire, 4))
    assert err.value.param == "messages"
    assert "serve --model tiny-random-vision" in str(err.value)  # the way out: a small model that takes images


async def test_stop_token_ids_end_the_output(engine: LocalEngine) -> None:
    first = await collect(engine, request("Hello there", max_tokens=24))
    inner = engine.loaded.renderer.tokenizer.instruct_tokenizer.tokenizer  # type: ignore[attr-defined]
    full_ids = inner.encode(text(first), bos=False, eos=False)
    stop_id = full_ids[3]
    events = await collect(engine, request("Hello there", max_tokens=24, stop_token_ids=[stop_id]))
    assert events[-1] == Finish("stop")
    usage = events[-2]
    assert isinstance(usage, Usage) and usage.completion_tokens < 24


async def test_thinking_budget_and_penalties_become_hooks(engine: LocalEngine) -> None:
    from unimodel.engines.local.hooks import RepetitionPenalties, ThinkingBudget

    req = request("think", presence_penalty=0.5)
    budget = dataclasses.replace(req, max_tokens=16, model_effort="high", thinking_budget=8)
    kinds = {type(h) for h in await engine.hooks_for(budget)}
    assert kinds == {ThinkingBudget, RepetitionPenalties}
    assert await engine.hooks_for(request("plain")) == []


async def test_flushes_follow_the_steps_and_keep_the_rules(engine: LocalEngine) -> None:
    events = await collect(engine, request("Hello", max_tokens=12))
    batches = check_flush_rules(events)
    assert sum(isinstance(e, Flush) for e in events) >= 1 and len(batches) >= 2
