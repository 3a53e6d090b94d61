"""``n`` > 1: the choices stage (fan-out, merge order, Flush rules, one usage and one finish, failures, closing),
the answer it folds into and the chunks it streams as, its idempotency record, and the validation of ``n``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any, Optional

import pytest
from pydantic import ValidationError

from tests.support.flush_rules import check_flush_rules
from unimodel.engines.base import GenerationRequest, SamplingOptions
from unimodel.errors import InvalidRequestError, UnimodelError, UpstreamError
from unimodel.gateway.choices import ChoicesStage, choice_requests, merged_choices
from unimodel.gateway.idempotency.record import StoredResponse, decode, encode
from unimodel.protocol.events import (
    FLUSH,
    ChoiceEvent,
    ContentDelta,
    Event,
    Finish,
    Flush,
    Logprobs,
    ReasoningDelta,
    TokenLogprob,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from unimodel.protocol.openai import ChatCompletionRequest, ModelCard
from unimodel.service.assemble import ChunkEncoder, CompletionBuilder, merge_deltas
from unimodel.service.context import RequestContext
from unimodel.service.errors import validation_to_error
from unimodel.service.pipeline import Call
from unimodel.service.validate import ValidateStage

REQUEST = GenerationRequest(completion_id="chatcmpl-x", served_model="m", messages=[], n=2)
WAIT_S = 10


class Scripted:
    """An engine call whose choice (told by its seed, 0 for none) yields its script; a script's ``"wait"`` item
    waits until the test sets ``gate``, an exception item raises it. Records each stream's request and whether it
    was closed."""

    def __init__(self, scripts: dict[int, Sequence[Any]]) -> None:
        self.scripts = scripts
        self.requests: list[GenerationRequest] = []
        self.closed: list[int] = []
        self.gate = asyncio.Event()

    async def __call__(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self.requests.append(request)
        choice = request.sampling.seed or 0
        try:
            for item in self.scripts[choice]:
                if item == "wait":
                    await asyncio.wait_for(self.gate.wait(), WAIT_S)
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            self.closed.append(choice)


def seeded(n: int = 2, seed: Optional[int] = 0) -> GenerationRequest:
    return dataclasses.replace(REQUEST, n=n, sampling=SamplingOptions(seed=seed))


async def collect(events: AsyncIterator[Event]) -> list[Event]:
    return [e async for e in events]


def answer(text: str, reason: str = "stop", usage: Usage = Usage(5, 2)) -> list[Event]:
    return [ContentDelta(text[:1]), FLUSH, ContentDelta(text[1:]), usage, Finish(reason)]  # type: ignore[arg-type]


async def test_n_1_is_not_wrapped() -> None:
    engine = Scripted({0: answer("hi")})
    call = Call(RequestContext("r"), {}, _no_body)
    call.engine_request = dataclasses.replace(REQUEST, n=1)
    assert ChoicesStage().wrap(call, engine) is engine


async def _no_body() -> bytes:
    return b""


def test_each_choice_is_its_own_request_seeded_as_vllm_seeds_them() -> None:
    requests = choice_requests(seeded(3, seed=7))
    assert [r.n for r in requests] == [1, 1, 1]
    assert [r.sampling.seed for r in requests] == [7, 8, 9]
    assert {r.completion_id for r in requests} == {"chatcmpl-x"}
    assert [r.sampling.seed for r in choice_requests(seeded(2, seed=None))] == [None, None]
    top = 2**63 - 1
    assert [r.sampling.seed for r in choice_requests(seeded(2, seed=top))] == [top, -(2**63)]  # a 64-bit seed


async def test_choices_merge_tagged_with_one_usage_and_one_finish_last() -> None:
    engine = Scripted({
        0: [ReasoningDelta("r"), FLUSH, ContentDelta("a"), FLUSH, ContentDelta("b"), Usage(5, 3, 1, cached_tokens=2),
            Finish("stop")],
        1: [ContentDelta("x"), FLUSH, ToolCallStart(0, "c1", "f"), ToolCallArgsDelta(0, "{}"), ToolCallEnd(0),
            FLUSH, Usage(5, 4, 0, estimated=True, cached_tokens=2), Finish("tool_calls")],
    })
    events = await asyncio.wait_for(collect(merged_choices(engine, seeded(2))), WAIT_S)
    check_flush_rules(events)
    plain = [e for e in events if not isinstance(e, Flush)]
    assert plain[-2:] == [Usage(5, 7, 1, estimated=True, cached_tokens=2), Finish("stop")]
    tagged = plain[:-2]
    assert all(type(e) is ChoiceEvent for e in tagged)
    for i in (0, 1):  # each choice's events, in its own order, its finish included; its usage only in the sum
        assert [e.event for e in tagged if e.index == i] == [  # type: ignore[union-attr]
            e for e in engine.scripts[i] if not isinstance(e, (Flush, Usage))]
    assert sorted(engine.closed) == [0, 1]
    assert [r.sampling.seed for r in engine.requests] == [0, 1]


async def test_nothing_goes_out_before_every_choice_has_started() -> None:
    engine = Scripted({0: answer("ab"), 1: ["wait", *answer("xy")]})
    events = merged_choices(engine, seeded(2))
    first = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.05)  # choice 0 has run to its end meanwhile; choice 1 has not started
    assert not first.done()
    engine.gate.set()
    rest = [await asyncio.wait_for(first, WAIT_S), *await asyncio.wait_for(collect(events), WAIT_S)]
    check_flush_rules(rest)
    assert {e.index for e in rest if type(e) is ChoiceEvent} == {0, 1}  # type: ignore[union-attr]


async def test_what_went_out_is_flushed_before_the_merged_stream_waits() -> None:
    engine = Scripted({0: [ContentDelta("a"), "wait", Finish("stop")], 1: [ContentDelta("x"), "wait", Finish("stop")]})
    events = merged_choices(engine, seeded(2))
    got = [await asyncio.wait_for(anext(events), WAIT_S) for _ in range(3)]  # never blocks on the gate
    assert got == [ChoiceEvent(0, ContentDelta("a")), ChoiceEvent(1, ContentDelta("x")), FLUSH]
    engine.gate.set()
    rest = await asyncio.wait_for(collect(events), WAIT_S)
    check_flush_rules(got + rest)
    assert rest[-1] == Finish("stop")


async def test_a_choice_refused_before_its_first_event_fails_the_request_and_closes_the_others() -> None:
    refused = UpstreamError("queue full")
    engine = Scripted({0: [ContentDelta("a"), FLUSH, "wait", ContentDelta("b"), Finish("stop")], 1: [refused]})
    events = merged_choices(engine, seeded(2))
    with pytest.raises(UpstreamError) as err:
        await asyncio.wait_for(anext(events), WAIT_S)  # nothing of choice 0 came out
    assert err.value is refused
    assert sorted(engine.closed) == [0, 1]


async def test_a_choice_failing_midway_breaks_the_stream() -> None:
    broken = UpstreamError("connection reset")
    engine = Scripted({0: [ContentDelta("a"), FLUSH, "wait", broken], 1: [*answer("xy")[:2], "wait", *answer("xy")[2:]]})
    events = merged_choices(engine, seeded(2))
    got = [await asyncio.wait_for(anext(events), WAIT_S)]
    engine.gate.set()
    with pytest.raises(UpstreamError):
        while True:
            got.append(await asyncio.wait_for(anext(events), WAIT_S))
    assert ChoiceEvent(0, ContentDelta("a")) in got
    assert not any(isinstance(e, Finish) for e in got)  # no untagged finish: the request did not finish
    assert sorted(engine.closed) == [0, 1]


async def test_closing_the_merged_stream_closes_every_choice() -> None:
    engine = Scripted({i: [ContentDelta(str(i)), FLUSH, "wait", Finish("stop")] for i in range(4)})
    events: Any = merged_choices(engine, seeded(4))
    await asyncio.wait_for(anext(events), WAIT_S)
    await asyncio.wait_for(events.aclose(), WAIT_S)  # the client left
    assert sorted(engine.closed) == [0, 1, 2, 3]


async def test_a_choice_without_usage_makes_the_sum_an_estimate() -> None:
    engine = Scripted({0: [ContentDelta("a"), Finish("length")], 1: [ContentDelta("b"), Usage(9, 4), Finish("stop")]})
    events = await asyncio.wait_for(collect(merged_choices(engine, seeded(2))), WAIT_S)
    assert events[-2:] == [Usage(9, 4, estimated=True), Finish("length")]


# ---- the answer, the stream, the record -----------------------------------------------------------------------

LP = Logprobs((TokenLogprob("b", -0.5),))
TWO: list[Event] = [ChoiceEvent(0, ContentDelta("H")), ChoiceEvent(1, ContentDelta("x")), ChoiceEvent(0, ContentDelta("i")),
       ChoiceEvent(0, LP), ChoiceEvent(1, ToolCallStart(0, "c1", "f")), ChoiceEvent(1, ToolCallArgsDelta(0, "{")),
       ChoiceEvent(1, ToolCallArgsDelta(0, "}")), ChoiceEvent(1, ToolCallEnd(0)),
       ChoiceEvent(1, Finish("tool_calls")), ChoiceEvent(0, Finish("length")), Usage(7, 5, 0), Finish("length")]


def test_the_builder_keeps_one_message_per_choice_sorted_by_index() -> None:
    body = CompletionBuilder().add_all(TWO).completion("chatcmpl-x", "m", 1).model_dump(mode="json")
    assert [c["index"] for c in body["choices"]] == [0, 1]
    first, second = body["choices"]
    assert first["message"]["content"] == "Hi" and first["finish_reason"] == "length"
    assert first["logprobs"] == {"content": [{"token": "b", "logprob": -0.5, "bytes": None, "top_logprobs": []}]}
    assert second["message"]["content"] == "x" and second["finish_reason"] == "tool_calls"
    assert second["message"]["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}
    assert second["logprobs"] is None
    assert body["usage"]["prompt_tokens"] == 7 and body["usage"]["completion_tokens"] == 5
    # merging a write's deltas joins only one choice's adjacent deltas, and folds to the same answer
    merged = merge_deltas(TWO)
    assert merged[:3] == [ChoiceEvent(0, ContentDelta("H")), ChoiceEvent(1, ContentDelta("x")),
                          ChoiceEvent(0, ContentDelta("i"))]
    assert ChoiceEvent(1, ToolCallArgsDelta(0, "{}")) in merged
    assert CompletionBuilder().add_all(merged).completion("chatcmpl-x", "m", 1) == \
        CompletionBuilder().add_all(TWO).completion("chatcmpl-x", "m", 1)


@pytest.mark.parametrize("include_usage", [False, True])
def test_the_encoder_writes_each_choice_with_its_index_then_one_closing_chunk(include_usage: bool) -> None:
    encoder = ChunkEncoder("chatcmpl-x", "m", include_usage=include_usage, created=1, n=2)
    firsts = [encoder.first(i) for i in range(encoder.n)]
    assert [(c["choices"][0]["index"], c["choices"][0]["delta"]) for c in firsts] == [
        (0, {"role": "assistant", "content": ""}), (1, {"role": "assistant", "content": ""})]
    chunks = encoder.encode_all(merge_deltas(TWO))
    with_choice = [c for c in chunks if c["choices"]]
    assert [c["choices"][0]["index"] for c in with_choice] == [0, 1, 0, 1, 1, 1, 0]
    assert with_choice[2]["choices"][0]["logprobs"]["content"][0]["token"] == "b"  # on its own choice's delta
    finishes = [(c["choices"][0]["index"], c["choices"][0]["finish_reason"]) for c in with_choice
                if c["choices"][0]["finish_reason"]]
    assert finishes == [(1, "tool_calls"), (0, "length")]
    closing = [c for c in chunks if not c["choices"]]
    if include_usage:
        assert len(closing) == 1 and closing[0]["usage"]["completion_tokens"] == 5
    else:
        assert closing == []  # no reasoning report asked (no applied reasoning): nothing more


def test_the_idempotency_record_keeps_the_choices() -> None:
    events: tuple[Event, ...] = (*TWO[:3], FLUSH, *TWO[3:])
    record = StoredResponse("f" * 64, "chatcmpl-x", 1, events)
    assert decode(encode(record)) == record
    assert b'["i",1,["c","x"]]' in encode(record)


# ---- validation ---------------------------------------------------------------------------------------------------

def _validated(stage: ValidateStage, **fields: Any) -> Call:
    call = Call(RequestContext("r"), {}, _no_body)
    call.client_request = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields})
    asyncio.run(stage.enter(call))
    return call


def test_n_up_to_the_servers_cap_reaches_the_engine_request_beyond_it_is_a_400_naming_n() -> None:
    stage = ValidateStage(lambda: [ModelCard(id="m")], max_n=4)
    assert _validated(stage).require_engine_request().n == 1
    assert _validated(stage, n=4, stream=True).require_engine_request().n == 4
    with pytest.raises(InvalidRequestError) as err:
        _validated(stage, n=5)
    assert err.value.param == "n" and err.value.status_code == 400 and "at most 4" in err.value.message


@pytest.mark.parametrize("n", [0, 129, "2x"])
def test_n_beyond_the_hard_bound_is_refused_by_the_wire_type(n: Any) -> None:
    with pytest.raises(ValidationError) as exc:
        ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": n})
    error = validation_to_error(exc.value)
    assert isinstance(error, UnimodelError) and error.status_code == 400 and error.param == "n"
    assert json.dumps(error.to_dict())  # an OpenAI-shaped body
