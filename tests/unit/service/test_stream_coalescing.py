"""Writes of a streamed answer: the events up to each ``Flush`` (every engine's contract) go out as one write,
adjacent deltas merged into one chunk; an engine that never flushes gets its answer out at its end, in one
write. Either way the answer folds to the same message as the non-streamed one, and a failure mid-way still
sends what was held first."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.fake_engine import InMemoryEngine
from unimodel.engines.base import Engine, GenerationRequest
from unimodel.errors import UpstreamError
from unimodel.protocol.events import (
    FLUSH,
    ContentDelta,
    Event,
    Finish,
    ReasoningDelta,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from unimodel.service.assemble import CompletionBuilder, merge_deltas
from unimodel.service.chat import ChatService
from unimodel.service.context import RequestContext
from unimodel.service.parse import ParseStage
from unimodel.service.pipeline import Call, Pipeline
from unimodel.service.validate import ValidateStage

SCRIPT: list[Event] = [
    ReasoningDelta("a "), ReasoningDelta("b "), FLUSH,
    ReasoningDelta("c "), ContentDelta("x"), ContentDelta("y"), FLUSH,
    ToolCallStart(0, "call_1", "f"), ToolCallArgsDelta(0, '{"q":'), ToolCallArgsDelta(0, '"z"}'), ToolCallEnd(0),
    FLUSH, Usage(5, 9, 3), Finish("tool_calls"),
]


class ScriptEngine(InMemoryEngine):
    kind = "script"
    max_model_len = 1000

    def __init__(self, events: list[Event], fail_at_end: bool = False) -> None:
        self.events, self.fail_at_end = events, fail_at_end

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        for event in self.events:
            yield event
        if self.fail_at_end:
            raise UpstreamError("the upstream connection failed")


async def _writes(engine: Engine, stream: bool = True) -> Any:
    service = ChatService(engine, Pipeline([ParseStage(), ValidateStage(engine.models)]))
    body = json.dumps({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}).encode()

    async def read() -> bytes:
        return body

    prepared = await service.prepare(Call(RequestContext("r"), {}, read))
    if not stream:
        return await service.complete(prepared)
    return [w async for w in service.stream(prepared)]


def _chunks(write: bytes) -> list[dict[str, Any]]:
    return [json.loads(f[len(b"data: "):]) for f in write.split(b"\n\n") if f and f != b"data: [DONE]"]


def _fold(writes: list[bytes]) -> dict[str, Any]:
    reasoning, content, args = "", "", ""
    for write in writes:
        for chunk in _chunks(write):
            for choice in chunk["choices"]:
                delta = choice["delta"]
                reasoning += delta.get("reasoning") or ""
                content += delta.get("content") or ""
                for call in delta.get("tool_calls") or []:
                    args += call["function"]["arguments"]
    return {"reasoning": reasoning, "content": content, "args": args}


async def test_one_write_per_flush_with_adjacent_deltas_merged() -> None:
    writes = await _writes(ScriptEngine(SCRIPT))
    # opening (role + the first event), the rest of the first batch, the second, the tool call, the end + [DONE]
    deltas = [[c["choices"][0]["delta"] for c in _chunks(w) if c["choices"]] for w in writes]
    assert deltas[0] == [{"role": "assistant", "content": ""}, {"reasoning": "a ", "reasoning_content": "a "}]
    assert deltas[1] == [{"reasoning": "b ", "reasoning_content": "b "}]
    assert deltas[2] == [{"reasoning": "c ", "reasoning_content": "c "}, {"content": "xy"}]
    assert [d.get("tool_calls", [{}])[0].get("function", {}).get("arguments") for d in deltas[3]] == ["", '{"q":"z"}']
    assert deltas[4] == [{}] and _chunks(writes[4])[0]["choices"][0]["finish_reason"] == "tool_calls"
    assert writes[-1].endswith(b"data: [DONE]\n\n")
    assert len(writes) == 5


async def test_an_engine_that_never_flushes_still_gets_its_answer_out_at_the_end() -> None:
    events = [e for e in SCRIPT if e is not FLUSH]
    writes = await _writes(ScriptEngine(events))
    # the opening (role + the first event), then everything else with [DONE]: held for a Flush that never came
    assert len(writes) == 2 and writes[-1].endswith(b"data: [DONE]\n\n")
    contents = [c["choices"][0]["delta"] for c in _chunks(writes[1]) if c["choices"]]
    assert {"content": "xy"} in contents  # merged, as within any batch
    assert _chunks(writes[1])[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize("flushes", [True, False], ids=["flushing", "never flushing"])
async def test_streamed_and_whole_answers_fold_to_the_same_message(flushes: bool) -> None:
    events = SCRIPT if flushes else [e for e in SCRIPT if e is not FLUSH]
    folded = _fold(await _writes(ScriptEngine(events)))
    whole = await _writes(ScriptEngine(events), stream=False)
    message = whole["choices"][0]["message"]
    assert folded == {"reasoning": message["reasoning"], "content": message["content"],
                      "args": message["tool_calls"][0]["function"]["arguments"]}


async def test_a_failure_mid_batch_still_sends_what_was_held_before_the_error_frame() -> None:
    events = [ContentDelta("x"), FLUSH, ContentDelta("y"), ContentDelta("z")]  # no Flush before the failure
    writes = await _writes(ScriptEngine(events, fail_at_end=True))
    last = _chunks(writes[-1])  # the frames held, the error, and [DONE]: one write
    assert last[0]["choices"][0]["delta"] == {"content": "yz"} and last[1]["error"]["type"]
    assert writes[-1].endswith(b"\n\ndata: [DONE]\n\n")


def test_merge_deltas_joins_only_adjacent_deltas_of_one_kind_and_one_call() -> None:
    events: list[Event] = [ContentDelta("a"), ContentDelta("b"), ReasoningDelta("r"), ContentDelta("c"),
                           ToolCallArgsDelta(0, "1"), ToolCallArgsDelta(0, "2"), ToolCallArgsDelta(1, "3"),
                           Usage(1, 2), Finish("stop")]
    assert merge_deltas(events) == [ContentDelta("ab"), ReasoningDelta("r"), ContentDelta("c"),
                                    ToolCallArgsDelta(0, "12"), ToolCallArgsDelta(1, "3"), Usage(1, 2),
                                    Finish("stop")]
    answer: list[Event] = [ContentDelta("a"), ContentDelta("b"), ReasoningDelta("r"), ContentDelta("c"),
                           ToolCallStart(0, "i", "f"), ToolCallArgsDelta(0, "1"), ToolCallArgsDelta(0, "2"),
                           ToolCallEnd(0), Finish("tool_calls")]
    built, merged = CompletionBuilder().add_all(answer), CompletionBuilder().add_all(merge_deltas(answer))
    assert built.message() == merged.message()


async def test_with_prompts_logged_the_answer_is_kept_only_up_to_what_the_log_stores() -> None:
    from unimodel.service.observer import Observers

    seen: list[Any] = []

    class Keep:
        def request_finished(self, ctx: Any) -> None:
            seen.append(ctx)

    engine = ScriptEngine([ContentDelta("abcdef"), ContentDelta("ghij"), Finish("stop")])
    service = ChatService(engine, Pipeline([ParseStage(), ValidateStage(engine.models)]), Observers([Keep()]),
                          capture_text_chars=8)
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()

    async def read() -> bytes:
        return body

    call = Call(RequestContext("r"), {}, read)
    await service.complete(await service.prepare(call))
    assert seen[0].answer_text == "abcdefgh"
