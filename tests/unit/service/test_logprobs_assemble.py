"""Logprobs events folded into a chat completion and encoded into chunks; merged deltas keep every entry in order;
cached prompt tokens in the usage."""

from __future__ import annotations

from typing import Any

from unimodel.gateway.idempotency.record import StoredResponse, decode, encode, event_size
from unimodel.protocol.events import (
    ContentDelta,
    Event,
    Finish,
    Logprobs,
    ReasoningDelta,
    TokenLogprob,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    TopLogprob,
    Usage,
)
from unimodel.service.assemble import ChunkEncoder, CompletionBuilder, merge_deltas, usage_info


def tok(text: str, logprob: float = -0.5, top: int = 2) -> TokenLogprob:
    alts = tuple(TopLogprob(f"{text}{i}", logprob - i, tuple(f"{text}{i}".encode())) for i in range(top))
    return TokenLogprob(text, logprob, tuple(text.encode()), alts)


def lp(*texts: str, reasoning: bool = False) -> Logprobs:
    return Logprobs(tuple(tok(t) for t in texts), reasoning)


#: a thinking model's events as an engine yields them: each token's deltas, then its logprobs
EVENTS: list[Event] = [
    lp("[THINK]", reasoning=True),
    ReasoningDelta("Let"), lp("Let", reasoning=True),
    ReasoningDelta(" me"), lp(" me", reasoning=True),
    lp("[/THINK]", reasoning=True),
    ContentDelta("Hi"), lp("Hi"),
    ContentDelta(" there"), lp(" there"),
    ToolCallStart(0, "call-1", "f"), lp("f"),
    ToolCallArgsDelta(0, "{}"), lp("{}"),
    ToolCallEnd(0),
    lp("</s>"),
    Usage(5, 9, 3, cached_tokens=4),
    Finish("tool_calls"),
]


def entries(events: list[Event], include_reasoning: bool = True) -> list[dict[str, Any]]:
    body = CompletionBuilder(include_reasoning).add_all(events).completion("chatcmpl-x", "m").model_dump(mode="json")
    return body["choices"][0]["logprobs"]["content"]


def streamed(events: list[Event], include_reasoning: bool = True) -> list[dict[str, Any]]:
    return ChunkEncoder("chatcmpl-x", "m", include_reasoning=include_reasoning,
                        include_usage=True).encode_all(events)


def joined(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for c in chunks for ch in c["choices"] for e in ((ch.get("logprobs") or {}).get("content") or [])]


def test_the_whole_answer_lists_every_token_in_order_in_openais_shape() -> None:
    got = entries(EVENTS)
    assert [e["token"] for e in got] == ["[THINK]", "Let", " me", "[/THINK]", "Hi", " there", "f", "{}", "</s>"]
    first = got[1]
    assert first == {"token": "Let", "logprob": -0.5, "bytes": list(b"Let"),
                     "top_logprobs": [{"token": "Let0", "logprob": -0.5, "bytes": list(b"Let0")},
                                      {"token": "Let1", "logprob": -1.5, "bytes": list(b"Let1")}]}


def test_hidden_reasoning_leaves_the_thinking_tokens_out() -> None:
    assert [e["token"] for e in entries(EVENTS, include_reasoning=False)] == ["Hi", " there", "f", "{}", "</s>"]
    assert [e["token"] for e in joined(streamed(EVENTS, include_reasoning=False))] == \
        ["Hi", " there", "f", "{}", "</s>"]


def test_no_logprobs_asked_means_null_and_asked_but_all_hidden_means_empty() -> None:
    plain = [ContentDelta("Hi"), Usage(1, 1), Finish("stop")]
    body = CompletionBuilder().add_all(plain).completion("chatcmpl-x", "m").model_dump(mode="json")
    assert body["choices"][0]["logprobs"] is None
    assert all(c["choices"][0]["logprobs"] is None for c in streamed(plain) if c["choices"])
    hidden = [ReasoningDelta("x"), lp("x", reasoning=True), Finish("stop")]
    assert entries(hidden, include_reasoning=False) == []


def test_each_chunk_carries_the_entries_of_its_own_text() -> None:
    chunks = streamed(EVENTS)
    by_text = {(c["choices"][0]["delta"].get("content") or c["choices"][0]["delta"].get("reasoning") or ""):
               [e["token"] for e in (c["choices"][0]["logprobs"] or {}).get("content") or []]
               for c in chunks if c["choices"]}
    assert by_text["Hi"] == ["Hi"] and by_text["Let"] == ["Let"]
    # a token that made no text (a marker, the stop token) rides on the chunk before it, in the same write…
    assert by_text[" me"] == [" me", "[/THINK]"]
    args = [c for c in chunks if c["choices"] and (c["choices"][0]["delta"].get("tool_calls") or [{}])[0]
            .get("function", {}).get("arguments")]
    assert [e["token"] for e in args[0]["choices"][0]["logprobs"]["content"]] == ["{}", "</s>"]
    # …or, first in its write, on a chunk of its own with an empty delta
    alone = [c for c in chunks if c["choices"] and c["choices"][0]["delta"] == {} and c["choices"][0]["logprobs"]]
    assert [[e["token"] for e in c["choices"][0]["logprobs"]["content"]] for c in alone] == [["[THINK]"]]
    assert joined(chunks) == entries(EVENTS)
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish[0]["choices"][0]["logprobs"] is None  # never on the finishing chunk: it came before


def test_merged_deltas_keep_all_their_logprobs_in_order() -> None:
    merged = merge_deltas(EVENTS)
    assert merged[:4] == [lp("[THINK]", reasoning=True), ReasoningDelta("Let me"),
                          lp("Let", " me", "[/THINK]", reasoning=True), ContentDelta("Hi there")]
    assert merged[4] == lp("Hi", " there")
    # folding the merged events gives the same answer, logprobs included; so does streaming them
    assert CompletionBuilder().add_all(merged).completion("c", "m", 1) == \
        CompletionBuilder().add_all(EVENTS).completion("c", "m", 1)
    assert joined(streamed(merged)) == joined(streamed(EVENTS))
    # one write of a content run makes one chunk that carries all of its entries
    run = merge_deltas([ContentDelta("a"), lp("a"), ContentDelta("b"), lp("b"), ContentDelta("c"), lp("c")])
    assert run == [ContentDelta("abc"), lp("a", "b", "c")]
    (chunk,) = streamed(run)
    assert [e["token"] for e in chunk["choices"][0]["logprobs"]["content"]] == ["a", "b", "c"]


def test_thinking_and_answer_logprobs_are_never_joined() -> None:
    merged = merge_deltas([lp("x", reasoning=True), lp("y")])
    assert merged == [lp("x", reasoning=True), lp("y")]


def test_cached_tokens_reach_the_usage_and_sum() -> None:
    info = usage_info(Usage(10, 2, cached_tokens=8))
    assert info is not None and info.model_dump()["prompt_tokens_details"] == {"cached_tokens": 8}
    unknown = usage_info(Usage(10, 2))
    assert unknown is not None and unknown.model_dump()["prompt_tokens_details"] is None
    assert (Usage(1, 1) + Usage(1, 1)).cached_tokens is None
    assert (Usage(1, 1, cached_tokens=3) + Usage(1, 1)).cached_tokens == 3
    chunks = streamed([ContentDelta("a"), Usage(10, 1, cached_tokens=6), Finish("stop")])
    assert chunks[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 6}


def test_an_idempotency_record_keeps_logprobs_and_cached_tokens() -> None:
    events = (*EVENTS, Logprobs((TokenLogprob("\ufffd", -9999.0, None, ()),)))
    back = decode(encode(StoredResponse("f", "chatcmpl-x", 1, events)))
    assert back.events == events
    assert decode(encode(StoredResponse("f", "c", 1, (Usage(1, 2, 0, False),)))).events == (Usage(1, 2, 0, False),)
    # an older record (no cached count) still reads
    old = b'{"v":1,"f":"f","id":"c","t":1,"e":[["u",1,2,0,false]]}'
    assert decode(old).events == (Usage(1, 2, 0, False),)
    assert event_size(lp("abc", "def")) > event_size(ContentDelta("abcdef"))
