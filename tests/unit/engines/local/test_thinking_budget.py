"""The thinking budget on the local engine, enforced on token ids and counted exactly.

The random model never opens ``[THINK]`` by itself, so a test hook (one of the engine's ``extra_hooks``, which
run before its own) makes it: ``[THINK]`` first, then never ``[/THINK]`` nor EOS of its own accord. Only the
engine's budget hook can then close the thinking, and it must do so after exactly ``budget`` thinking tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch

from unimodel.engines.base import GenerationRequest
from tests.support.requests import gen_request
from unimodel.engines.local import LocalEngine
from unimodel.engines.local.hooks import force_token
from unimodel.protocol.events import (
    ContentDelta,
    Event,
    Finish,
    ReasoningDelta,
    ThinkingBudgetReached,
    Usage,
)
from unimodel.protocol.openai import ChatCompletionRequest


class ThinkForever:
    def __init__(self, think: int, end: int, eos: Sequence[int]) -> None:
        self.think, self.end, self.eos = think, end, list(eos)

    def __call__(self, generated: Sequence[int], logits: torch.Tensor) -> None:
        if not generated:
            force_token(logits, self.think)
            return
        logits[[self.think, self.end, *self.eos]] = float("-inf")


@pytest.fixture()
def thinking_engine(engine: LocalEngine, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalEngine]:
    special = engine.special_ids
    forcing = ThinkForever(special["[THINK]"], special["[/THINK]"], sorted(engine.eos_ids))
    monkeypatch.setattr(engine, "extra_hooks", [forcing])
    yield engine


def _request(budget: int | None, max_tokens: int, effort: str = "high") -> GenerationRequest:
    wire = ChatCompletionRequest(model="tiny-random", messages=[{"role": "user", "content": "Think hard."}],  # type: ignore[list-item]
                                 max_tokens=max_tokens, temperature=0.0)
    return gen_request(completion_id="r", served_model="tiny-random", wire=wire, max_tokens=max_tokens,
                             effort=effort, model_effort="high", thinking_budget=budget)


async def _run(engine: LocalEngine, req: GenerationRequest) -> dict[str, Any]:
    events: list[Event] = [e async for e in engine.generate(req)]
    usage = next(e for e in events if isinstance(e, Usage))
    return {"events": events, "usage": usage, "finish": events[-1],
            "reasoning": "".join(e.text for e in events if isinstance(e, ReasoningDelta)),
            "content": "".join(e.text for e in events if isinstance(e, ContentDelta)),
            "truncated": [e for e in events if isinstance(e, ThinkingBudgetReached)]}


@pytest.mark.parametrize("budget", [1, 8, 20])
async def test_budget_closes_thinking_after_exactly_budget_tokens(thinking_engine: LocalEngine,
                                                                   budget: int) -> None:
    got = await _run(thinking_engine, _request(budget, max_tokens=40))
    assert got["usage"].reasoning_tokens == budget
    assert got["truncated"] == [ThinkingBudgetReached(budget)]
    assert got["content"], "the answer must follow the closed thinking"
    # [THINK] + budget thinking tokens + [/THINK] + the answer up to max_tokens
    assert got["usage"].completion_tokens == 40 and got["finish"] == Finish("length")


async def test_unbounded_thinking_runs_to_max_tokens(thinking_engine: LocalEngine) -> None:
    got = await _run(thinking_engine, _request(None, max_tokens=30))
    assert got["usage"].reasoning_tokens == 29  # everything after [THINK]
    assert got["truncated"] == [] and got["content"] == "" and got["finish"] == Finish("length")


async def test_budget_leaving_no_room_for_an_answer_is_length(thinking_engine: LocalEngine) -> None:
    got = await _run(thinking_engine, _request(64, max_tokens=20))
    assert got["finish"] == Finish("length") and got["content"] == ""
    assert got["usage"].reasoning_tokens == 19
