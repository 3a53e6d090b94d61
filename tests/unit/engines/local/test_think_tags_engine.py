"""The local engine on a ``think-tags`` model (chat template, ``<think>``): every feature works or is a 400.

Three tiny random checkpoints (:mod:`.think_tags_model`): one whose tokenizer has the tags as single tokens,
one that spells them byte by byte, and one whose template opens ``<think>`` in the generation prompt.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.requests import gen_request
from unimodel.engines.base import GenerationRequest
from unimodel.engines.local import LocalEngine
from unimodel.engines.local.hooks import BanTokens, ThinkingBudget, force_token
from unimodel.errors import UnsupportedFeatureError
from unimodel.protocol.events import (
    ContentDelta,
    Event,
    Finish,
    ReasoningDelta,
    ThinkingBudgetReached,
    ToolCallArgsDelta,
    ToolCallStart,
    Usage,
)

from .conftest import start_engine
from .think_tags_model import build_think_tags_checkpoint

TOOLS = [{"type": "function", "function": {"name": "set_light", "parameters": {
    "type": "object", "additionalProperties": False, "required": ["on"], "properties": {"on": {"type": "boolean"}}}}},
    {"type": "function", "function": {"name": "pick", "parameters": {
        "type": "object", "additionalProperties": False, "required": ["n"],
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 3}}}}}]


def _engine(path: Path) -> Iterator[LocalEngine]:
    eng = start_engine(str(path), path.parent, max_num_seqs=4, max_queue=8)
    yield eng
    asyncio.run(eng.aclose())


@pytest.fixture(scope="module")
def tagged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEngine]:
    yield from _engine(build_think_tags_checkpoint(tmp_path_factory.mktemp("tt") / "tagged"))


@pytest.fixture(scope="module")
def untagged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEngine]:
    yield from _engine(build_think_tags_checkpoint(tmp_path_factory.mktemp("tt") / "untagged", markers=False))


@pytest.fixture(scope="module")
def opening(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalEngine]:
    yield from _engine(build_think_tags_checkpoint(tmp_path_factory.mktemp("tt") / "opening", opens_thinking=True))


def request(messages: list[dict[str, Any]] | None = None, max_tokens: int = 24, effort: str | None = "high",
            budget: int | None = None, **wire: Any) -> GenerationRequest:
    body = {"model": "m", "messages": messages or [{"role": "user", "content": "Think."}], "temperature": 0.0,
            **wire}
    return gen_request("r", "m", body, max_tokens, model_effort=effort, thinking_budget=budget)


async def collect(engine: LocalEngine, req: GenerationRequest) -> list[Event]:
    return [e async for e in engine.generate(req)]


def texts(events: list[Event]) -> tuple[str, str]:
    return ("".join(e.text for e in events if isinstance(e, ReasoningDelta)),
            "".join(e.text for e in events if isinstance(e, ContentDelta)))


class KeepThinking:
    """Test hook: optionally open the thinking first, then never close it nor end of the model's accord."""

    def __init__(self, engine: LocalEngine, *, open_first: bool) -> None:
        self.open, self.close = engine.markers.thinking or (0, 0)
        self.banned = [self.close, *sorted(engine.eos_ids)]
        self.open_first = open_first

    def __call__(self, generated: Sequence[int], logits: torch.Tensor) -> None:
        if self.open_first and not generated:
            force_token(logits, self.open)
            return
        logits[self.banned] = float("-inf")


def keep_thinking(monkeypatch: pytest.MonkeyPatch, engine: LocalEngine, *, open_first: bool) -> None:
    monkeypatch.setattr(engine, "extra_hooks", [KeepThinking(engine, open_first=open_first)])


def test_the_family_comes_from_the_checkpoint(tagged: LocalEngine, engine: LocalEngine) -> None:
    assert tagged.loaded.format.name == "think-tags" and engine.loaded.format.name == "mistral"
    assert tagged.markers.thinking is not None and tagged.markers.tool_call is not None


@pytest.mark.parametrize("budget", [1, 6])
async def test_thinking_budget_closes_think_tags(tagged: LocalEngine, monkeypatch: pytest.MonkeyPatch,
                                                 budget: int) -> None:
    keep_thinking(monkeypatch, tagged, open_first=True)
    events = await collect(tagged, request(budget=budget, max_tokens=30))
    usage = next(e for e in events if isinstance(e, Usage))
    reasoning, content = texts(events)
    assert usage.reasoning_tokens == budget and ThinkingBudgetReached(budget) in events
    assert reasoning and content and events[-1] == Finish("length")


async def test_a_prompt_that_opens_thinking_is_budgeted_from_its_first_token(
        opening: LocalEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    keep_thinking(monkeypatch, opening, open_first=False)
    events = await collect(opening, request(budget=5, max_tokens=20))
    usage = next(e for e in events if isinstance(e, Usage))
    reasoning, content = texts(events)
    assert usage.reasoning_tokens == 5 and ThinkingBudgetReached(5) in events
    assert isinstance(events[0], ReasoningDelta) and reasoning and content


async def test_thinking_budget_without_single_token_tags_is_a_400(untagged: LocalEngine) -> None:
    assert untagged.markers.thinking is None
    with pytest.raises(UnsupportedFeatureError) as err:
        await collect(untagged, request(budget=8))
    assert err.value.param == "thinking_budget" and "think-tags" in err.value.message
    assert (await collect(untagged, request(budget=None, max_tokens=4)))[-1] == Finish("length")


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "pick"}}])
async def test_forced_tool_choice_without_single_token_tags_is_a_400(untagged: LocalEngine, choice: Any) -> None:
    with pytest.raises(UnsupportedFeatureError) as err:
        await collect(untagged, request(tools=TOOLS, tool_choice=choice))
    assert err.value.param == "tool_choice" and "think-tags" in err.value.message


def _calls(events: list[Event]) -> list[tuple[str, Any]]:
    names = {e.index: e.name for e in events if isinstance(e, ToolCallStart)}
    args: dict[int, str] = {}
    for e in events:
        if isinstance(e, ToolCallArgsDelta):
            args[e.index] = args.get(e.index, "") + e.text
    return [(names[i], json.loads(args[i])) for i in sorted(names)]


async def test_named_tool_choice_gives_one_valid_hermes_call(tagged: LocalEngine) -> None:
    choice = {"type": "function", "function": {"name": "pick"}}
    events = await collect(tagged, request(tools=TOOLS, tool_choice=choice, effort="none", max_tokens=120))
    calls = _calls(events)
    assert len(calls) == 1 and calls[0][0] == "pick" and 0 <= calls[0][1]["n"] <= 3
    assert events[-1] == Finish("tool_calls")


async def test_required_tool_choice_gives_valid_hermes_calls(tagged: LocalEngine) -> None:
    events = await collect(tagged, request(tools=TOOLS, tool_choice="required", effort="none", max_tokens=200,
                                           parallel_tool_calls=False))
    calls = _calls(events)
    assert len(calls) == 1 and events[-1] == Finish("tool_calls")
    assert (calls[0][0], sorted(calls[0][1])) in [("set_light", ["on"]), ("pick", ["n"])]


async def test_tool_choice_none_bans_the_call_tag(tagged: LocalEngine) -> None:
    hooks = await tagged.hooks_for(request(tools=TOOLS, tool_choice="none"))
    assert len(hooks) == 1 and isinstance(hooks[0], BanTokens)
    assert hooks[0].token_ids == [tagged.markers.tool_call]


async def test_json_grammar_lets_a_think_tags_model_think_first(tagged: LocalEngine) -> None:
    rf = {"type": "json_object"}
    think, _ = tagged.markers.thinking or (0, 0)
    for effort, may_think in (("high", True), ("none", False)):
        (hook,) = await tagged.hooks_for(request(effort=effort, response_format=rf))
        logits = torch.zeros(tagged.loaded.config.vocab_size)
        hook([], logits)
        assert bool(torch.isfinite(logits[think])) is may_think
    events = await collect(tagged, request(effort="none", response_format=rf, max_tokens=60))
    assert texts(events)[1].startswith("{")


async def test_opened_thinking_is_part_of_the_json_grammar(opening: LocalEngine) -> None:
    (hook,) = await opening.hooks_for(request(effort="none", response_format={"type": "json_object"}), opened=True)
    _, close = opening.markers.thinking or (0, 0)
    logits = torch.zeros(opening.loaded.config.vocab_size)
    hook([], logits)
    assert torch.isfinite(logits[close]) and not torch.isfinite(logits[sorted(opening.eos_ids)[0]])


async def test_prefill_continues_the_final_message(tagged: LocalEngine) -> None:
    messages = [{"role": "user", "content": "Tell a story."}, {"role": "assistant", "content": "Once upon"}]
    req = request(messages, continue_final_message=True, max_tokens=6, effort=None)
    prompt = await tagged.render(req)
    tokenizer = tagged.loaded.renderer.tokenizer  # type: ignore[attr-defined]
    assert prompt.token_ids[-len("Once upon"):] == tokenizer.encode("Once upon", add_special_tokens=False)
    events = await collect(tagged, req)
    usage = next(e for e in events if isinstance(e, Usage))
    assert usage.prompt_tokens == len(prompt.token_ids) and usage.completion_tokens == 6


async def test_prefill_inside_thinking_continues_the_thinking(tagged: LocalEngine,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    keep_thinking(monkeypatch, tagged, open_first=False)
    messages = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>\nLet me see"}]
    events = await collect(tagged, request(messages, continue_final_message=True, max_tokens=10, budget=4))
    reasoning, content = texts(events)
    assert isinstance(events[0], ReasoningDelta) and reasoning and content
    assert ThinkingBudgetReached(4) in events
    hooks = await tagged.hooks_for(request(budget=4), opened=True)
    budget_hooks = [h for h in hooks if isinstance(h, ThinkingBudget)]
    assert budget_hooks and budget_hooks[0].inside
