"""The embedded engine's logprobs: computed only for the rows that ask, from the model's raw distribution (vLLM's
default ``raw_logprobs``: before hooks, penalties, temperature), one entry per counted token, in OpenAI's shape."""

from __future__ import annotations

import asyncio
from typing import Any

import torch

from tests.support.requests import gen_request
from unimodel.engines.local import LocalEngine
from unimodel.engines.local.hooks import BanTokens
from unimodel.engines.local.sampling import SamplingParams
from unimodel.engines.local.scheduler import BatchScheduler
from unimodel.engines.local.sequence import SequenceRequest
from unimodel.protocol.events import ContentDelta, Event, Flush, Logprobs, ReasoningDelta, ToolCallStart, Usage
from unimodel.protocol.openai import ChatCompletionRequest


class _NoModel(torch.nn.Module):
    def forward(self, input_ids: Any = None, past_key_values: Any = None) -> None:  # never run here
        raise AssertionError("not called")


def _scheduler() -> BatchScheduler:
    return BatchScheduler(_NoModel(), device=torch.device("cpu"), max_num_seqs=4, max_queue=0, max_model_len=64,
                          new_cache=lambda: None)


def _seq(top: int | None, *, temperature: float = 0.0, hooks: list[Any] | None = None) -> SequenceRequest:
    seq = SequenceRequest([1, 2], SamplingParams(max_new_tokens=4, temperature=temperature, seed=3),
                          lambda *a: None, hooks=list(hooks or []))
    seq.top_logprobs = top
    seq.generator = seq.params.new_generator()
    return seq


def test_only_the_rows_that_ask_get_raw_logprobs_before_hooks_and_temperature() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0], [0.0, 3.0, 1.0, 0.0], [1.0, 0.5, 4.0, 0.0]])
    raw = torch.log_softmax(logits, dim=-1)
    banned = _seq(2, hooks=[BanTokens([0])])  # greedy, its best token banned by a hook
    silent = _seq(None)
    hot = _seq(0, temperature=0.5)
    tokens = _scheduler()._sample([banned, silent, hot], logits.clone())
    assert tokens[0] == 1  # the hook changed the choice…
    (chosen, top), = banned.logprobs
    assert chosen == raw[0, 1].item()  # …but not the distribution reported: the model's own
    assert [t for t, _ in top] == [0, 1] and [v for _, v in top] == raw[0, :2].tolist()
    assert silent.logprobs == []  # not asked: nothing computed or kept
    (chosen, top), = hot.logprobs
    assert top == [] and chosen == raw[2, tokens[2]].item()  # before the temperature scaled it


def test_engine_logprobs_cover_every_counted_token(engine: LocalEngine) -> None:
    wire = ChatCompletionRequest(model="tiny-random", messages=[{"role": "user", "content": "Tell me a story"}],
                                 max_tokens=10, temperature=0.0, logprobs=True, top_logprobs=3)
    events: list[Event] = asyncio.run(_collect(engine, gen_request("r", "tiny-random", wire, max_tokens=10)))
    entries = [t for e in events if isinstance(e, Logprobs) for t in e.tokens]
    usage = next(e for e in events if isinstance(e, Usage))
    assert len(entries) == usage.completion_tokens and usage.cached_tokens == 0
    for t in entries:
        assert len(t.top) == 3 and t.logprob <= 0.0
        assert [a.logprob for a in t.top] == sorted((a.logprob for a in t.top), reverse=True)
        assert (t.token, t.logprob) == (t.top[0].token, t.top[0].logprob)  # greedy: the likeliest was chosen
        assert t.bytes is not None and t.token == bytes(t.bytes).decode("utf-8", "replace")
    if not any(isinstance(e, (ReasoningDelta, ToolCallStart)) for e in events):
        text = "".join(e.text for e in events if isinstance(e, ContentDelta))
        joined = b"".join(bytes(t.bytes or ()) for t in entries).decode("utf-8", "replace")
        assert joined.removesuffix("</s>") == text
    # asking changes nothing of the answer
    plain = wire.model_copy(update={"logprobs": None, "top_logprobs": None})
    again = asyncio.run(_collect(engine, gen_request("r", "tiny-random", plain, max_tokens=10)))
    def answer(events: list[Event]) -> list[Event]:  # where Flushes fall depends on timing
        return [e for e in events if not isinstance(e, (Logprobs, Flush))]

    assert answer(again) == answer(events)
    assert not any(isinstance(e, Logprobs) for e in again)


def test_logprobs_of_a_token_after_a_stop_string_are_not_shown(engine: LocalEngine) -> None:
    base = {"model": "tiny-random", "messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 10,
            "temperature": 0.0, "logprobs": True}
    events = asyncio.run(_collect(engine, gen_request("r", "tiny-random", base, max_tokens=10)))
    text = "".join(e.text for e in events if isinstance(e, ContentDelta))
    assert len(text) >= 4, text  # tiny-random's weights are built from a fixed seed: its answer is known
    cut = asyncio.run(_collect(engine, gen_request("r", "tiny-random", {**base, "stop": [text[2:4]]}, max_tokens=10)))
    usage = next(e for e in cut if isinstance(e, Usage))
    assert sum(len(e.tokens) for e in cut if isinstance(e, Logprobs)) == usage.completion_tokens
    assert all(t.top == () for e in cut if isinstance(e, Logprobs) for t in e.tokens)  # top_logprobs 0


async def _collect(engine: LocalEngine, request: Any) -> list[Event]:
    return [e async for e in engine.generate(request)]
