"""Constrained decoding (llguidance): response_format JSON modes and tool_choice required/named/none."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from unimodel.engines.base import GenerationRequest
from tests.support.requests import gen_request
from unimodel.engines.local import LocalEngine
from unimodel.errors import InvalidRequestError
from unimodel.formats.grammar import ThinkingMode, build_grammar, json_answer
from unimodel.protocol.events import ContentDelta, Event, Finish
from unimodel.protocol.openai import ChatCompletionRequest

pytest.importorskip("llguidance")

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["ok", "n", "color"],
          "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 9},
                         "color": {"enum": ["red", "green"]}}}


def request(response_format: dict[str, Any], content: str = "give json", seed: int | None = None,
            temperature: float = 0.0, effort: str | None = None) -> GenerationRequest:
    wire = ChatCompletionRequest(model="tiny-random", messages=[{"role": "user", "content": content}],
                                 temperature=temperature, seed=seed, max_tokens=120, response_format=response_format)
    return gen_request("r", "tiny-random", wire, 120, model_effort=effort)  # type: ignore[arg-type]


async def collect(engine: LocalEngine, req: GenerationRequest) -> list[Event]:
    return [e async for e in engine.generate(req)]


def content(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, ContentDelta))


@pytest.mark.parametrize("seed", [None, 1, 2])
async def test_json_schema_output_is_valid(engine: LocalEngine, seed: int | None) -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}
    events = await collect(engine, request(rf, seed=seed, temperature=0.0 if seed is None else 1.0))
    value = json.loads(content(events))
    assert set(value) == {"ok", "n", "color"} and isinstance(value["ok"], bool)
    assert 0 <= value["n"] <= 9 and value["color"] in ("red", "green")
    assert events[-1] == Finish("stop")


async def test_json_object_output_is_an_object(engine: LocalEngine) -> None:
    # a random model rarely closes a string, so a cut-off output is allowed; a finished one must parse
    finished = 0
    for prompt in ("a", "bb", "give json", "some json please"):
        events = await collect(engine, request({"type": "json_object"}, content=prompt))
        assert content(events).startswith("{")
        if events[-1] == Finish("stop"):
            assert isinstance(json.loads(content(events)), dict)
            finished += 1
    assert finished


async def test_invalid_schema_is_a_400(engine: LocalEngine) -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "$ref": "#/nowhere"}}}
    with pytest.raises(InvalidRequestError) as err:
        await collect(engine, request(rf))
    assert err.value.param == "response_format"


def _json_hook(engine: LocalEngine, mode: ThinkingMode) -> Any:
    fmt, markers = engine.loaded.format, engine.markers
    grammar = build_grammar(json_answer({"type": "object"}), fmt.thinking_grammar(markers), mode, engine.eos_ids)
    return engine._grammar.hook(grammar, "response_format")


def test_grammar_allows_thinking_first_only_when_asked(engine: LocalEngine) -> None:
    think, end = engine.special_ids["[THINK]"], engine.special_ids["[/THINK]"]
    vocab = engine.loaded.config.vocab_size
    with_think = _json_hook(engine, "optional")
    logits = torch.zeros(vocab)
    with_think([], logits)
    assert torch.isfinite(logits[think])
    inner = engine.loaded.renderer.tokenizer.instruct_tokenizer.tokenizer  # type: ignore[attr-defined]
    thought = list(inner.encode("hmm {", bos=False, eos=False))
    logits = torch.zeros(vocab)
    with_think([think, *thought], logits)
    assert torch.isfinite(logits[end])  # inside thinking anything goes, [/THINK] included
    assert not torch.isfinite(logits[sorted(engine.eos_ids)[0]])  # but not EOS
    logits = torch.zeros(vocab)
    with_think([think, *thought, end], logits)
    assert not torch.isfinite(logits[think]) and torch.isfinite(logits[inner.encode("{", bos=False, eos=False)[0]])
    without = _json_hook(engine, "off")
    logits = torch.zeros(vocab)
    without([], logits)
    assert not torch.isfinite(logits[think])


def test_grammar_lets_an_opened_thinking_finish_first(engine: LocalEngine) -> None:
    end = engine.special_ids["[/THINK]"]
    brace = engine.loaded.renderer.tokenizer.instruct_tokenizer.tokenizer.encode(  # type: ignore[attr-defined]
        "{", bos=False, eos=False)[0]
    opened = _json_hook(engine, "opened")
    logits = torch.zeros(engine.loaded.config.vocab_size)
    opened([], logits)
    assert torch.isfinite(logits[end]) and torch.isfinite(logits[brace])  # still thinking: anything but EOS
    logits = torch.zeros(engine.loaded.config.vocab_size)
    opened([brace, end], logits)
    assert torch.isfinite(logits[brace]) and not torch.isfinite(logits[end])


TOOLS = [
    {"type": "function", "function": {"name": "set_light", "parameters": {
        "type": "object", "additionalProperties": False, "required": ["on"], "properties": {"on": {"type": "boolean"}}}}},
    {"type": "function", "function": {"name": "pick", "parameters": {
        "type": "object", "additionalProperties": False, "required": ["n"],
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 3}}}}},
]


def tool_request(tool_choice: Any, parallel: bool | None = None, prompt: str = "do it") -> GenerationRequest:
    wire = ChatCompletionRequest(model="tiny-random", messages=[{"role": "user", "content": prompt}],
                                 temperature=0.0, max_tokens=80, tools=TOOLS, tool_choice=tool_choice,
                                 parallel_tool_calls=parallel)
    return gen_request("r", "tiny-random", wire, 80)


def calls(events: list[Event]) -> list[tuple[str, dict[str, Any]]]:
    from unimodel.protocol.events import ToolCallArgsDelta, ToolCallStart

    names = {e.index: e.name for e in events if isinstance(e, ToolCallStart)}
    args: dict[int, str] = {}
    for e in events:
        if isinstance(e, ToolCallArgsDelta):
            args[e.index] = args.get(e.index, "") + e.text
    return [(names[i], json.loads(args[i])) for i in sorted(names)]


async def test_required_tool_choice_yields_valid_calls(engine: LocalEngine) -> None:
    for prompt in ("do it", "turn on the light", "pick one"):
        events = await collect(engine, tool_request("required", prompt=prompt))
        got = calls(events)
        assert got and events[-1] == Finish("tool_calls")
        for name, args in got:
            assert (name, sorted(args)) in [("set_light", ["on"]), ("pick", ["n"])]


async def test_named_tool_choice_calls_that_tool_once(engine: LocalEngine) -> None:
    events = await collect(engine, tool_request({"type": "function", "function": {"name": "pick"}}))
    got = calls(events)
    assert len(got) == 1 and got[0][0] == "pick" and 0 <= got[0][1]["n"] <= 3
    assert events[-1] == Finish("tool_calls")


async def test_tool_choice_none_never_calls(engine: LocalEngine) -> None:
    events = await collect(engine, tool_request("none"))
    assert calls(events) == [] and events[-1] != Finish("tool_calls")
