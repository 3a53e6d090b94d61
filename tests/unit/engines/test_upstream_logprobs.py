"""The upstream engine's logprobs, cached prompt tokens and priority: read from hand-written frames and bodies
(parsed and raw, thinking and answer), and what goes out in the upstream's request."""

from __future__ import annotations

import json
from typing import Any

from tests.support.requests import gen_request
from unimodel.engines.upstream import UpstreamEngine
from unimodel.engines.upstream_stream import UpstreamStreamDecoder
from unimodel.formats.registry import get_format
from unimodel.protocol.events import ContentDelta, Event, Logprobs, ReasoningDelta, TokenLogprob, TopLogprob, Usage


def entry(token: str, logprob: float = -0.25, top: int = 1) -> dict[str, Any]:
    alts = [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]
    alts += [{"token": f"{token}~{i}", "logprob": logprob - i, "bytes": None} for i in range(1, top)]
    return {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": alts}


def frame(delta: dict[str, Any], tokens: list[str], finish: str | None = None, **extra: Any) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish,
              "logprobs": {"content": [entry(t) for t in tokens]}}
    return b"data: " + json.dumps({"choices": [choice], **extra}).encode()


def decode(lines: list[bytes], *, parse: bool, logprobs: bool = True) -> list[Event]:
    dec = UpstreamStreamDecoder(get_format("mistral"), parse_content=parse, logprobs=logprobs)
    out: list[Event] = []
    for line in lines:
        out.extend(dec.sse_line(line))
    return out + dec.close()


def tokens(events: list[Event], reasoning: bool | None = None) -> list[str]:
    return [t.token for e in events if isinstance(e, Logprobs) and (reasoning is None or e.reasoning == reasoning)
            for t in e.tokens]


RAW = [frame({"content": "[THINK]"}, ["[THINK]"]), frame({"content": "Hm"}, ["Hm"]),
       frame({"content": "[/THINK]"}, ["[/THINK]"]), frame({"content": "Hi"}, ["Hi"]),
       frame({}, ["</s>"], "stop"), b"data: [DONE]"]


def test_raw_output_parsed_by_us_keeps_every_entry_and_marks_the_thinking() -> None:
    events = decode(RAW, parse=True)
    assert tokens(events) == ["[THINK]", "Hm", "[/THINK]", "Hi", "</s>"]
    assert tokens(events, reasoning=True) == ["[THINK]", "Hm", "[/THINK]"]
    # each frame's entries right after its deltas
    kinds = [type(e).__name__ for e in events if isinstance(e, (Logprobs, ReasoningDelta, ContentDelta))]
    assert kinds == ["Logprobs", "ReasoningDelta", "Logprobs", "Logprobs", "ContentDelta", "Logprobs", "Logprobs"]


def test_upstream_parsed_thinking_is_marked_by_its_field() -> None:
    # vLLM's reasoning parser sends the opening marker's frame with an empty delta, the closing one's as thinking
    events = decode([frame({}, ["[THINK]"]), frame({"reasoning": "Hm"}, ["Hm"]), frame({}, ["[/THINK]"]),
                     frame({"content": "Hi"}, ["Hi"]),
                     frame({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]},
                           ["f", "{}"]),
                     frame({}, ["</s>"], "tool_calls"), b"data: [DONE]"], parse=False)
    assert tokens(events) == ["[THINK]", "Hm", "[/THINK]", "Hi", "f", "{}", "</s>"]
    assert tokens(events, reasoning=True) == ["[THINK]", "Hm", "[/THINK]"]


def test_entries_keep_the_upstreams_numbers_bytes_and_alternatives() -> None:
    line = b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": "\u00e9"}, "finish_reason": "stop",
                                                "logprobs": {"content": [entry("\u00e9", -1.5, top=3)]}}]}).encode()
    (lp,) = [e for e in decode([line], parse=False) if isinstance(e, Logprobs)]
    assert lp.tokens == (TokenLogprob("\u00e9", -1.5, (195, 169), (
        TopLogprob("\u00e9", -1.5, (195, 169)), TopLogprob("\u00e9~1", -2.5, None), TopLogprob("\u00e9~2", -3.5, None))),)


def test_odd_entries_are_read_leniently_and_bounded() -> None:
    odd = {"content": [
        {"token": "a", "logprob": None, "bytes": [300], "top_logprobs": "no"},  # odd values: floor, None, none
        {"logprob": -1.0},  # no token: skipped
        "not an object",
        {"token": "b", "logprob": True, "bytes": [1, True],
         "top_logprobs": [{"token": str(i), "logprob": -float(i)} for i in range(30)] + [7]},
    ]}
    line = b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": "ab"}, "logprobs": odd,
                                                "finish_reason": "stop"}]}).encode()
    (lp,) = [e for e in decode([line], parse=False) if isinstance(e, Logprobs)]
    a, b = lp.tokens
    assert (a.token, a.logprob, a.bytes, a.top) == ("a", -9999.0, None, ())
    assert (b.token, b.logprob, b.bytes) == ("b", -9999.0, None) and len(b.top) == 20
    for bad in ({"content": "x"}, [1], None, 5):  # a logprobs object that is not one: nothing, never a crash
        line = b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": "a"}, "logprobs": bad,
                                                    "finish_reason": "stop"}]}).encode()
        assert tokens(decode([line], parse=False)) == []
    nan = b'data: {"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": "stop", ' \
          b'"logprobs": {"content": [{"token": "a", "logprob": NaN}]}}]}'
    (lp,) = [e for e in decode([nan], parse=False) if isinstance(e, Logprobs)]
    assert lp.tokens[0].logprob == -9999.0


def test_logprobs_an_upstream_sends_unasked_are_not_passed_on() -> None:
    assert tokens(decode(RAW, parse=True, logprobs=False)) == []


def test_a_whole_body_gives_one_entry_list_marked_thinking_when_it_thinks() -> None:
    def body(message: dict[str, Any]) -> bytes:
        return json.dumps({"choices": [{"index": 0, "message": message, "finish_reason": "stop",
                                        "logprobs": {"content": [entry("a"), entry("b")]}}],
                           "usage": {"prompt_tokens": 9, "completion_tokens": 2,
                                     "prompt_tokens_details": {"cached_tokens": 4}}}).encode()

    dec = UpstreamStreamDecoder(get_format("mistral"), parse_content=True, logprobs=True)
    events = dec.whole_body(body({"content": "ab"}))
    (lp,) = [e for e in events if isinstance(e, Logprobs)]
    assert tokens(events) == ["a", "b"] and not lp.reasoning
    assert [e for e in events if isinstance(e, Usage)][0].cached_tokens == 4
    dec = UpstreamStreamDecoder(get_format("mistral"), parse_content=True, logprobs=True)
    (lp,) = [e for e in dec.whole_body(body({"content": "[THINK]x[/THINK]ab"})) if isinstance(e, Logprobs)]
    assert lp.reasoning  # thinking and answer cannot be told apart in one list: hidden with the reasoning


def test_cached_tokens_come_from_the_usage_and_never_exceed_the_prompt() -> None:
    def usage(details: Any) -> Usage:
        line = b"data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 1,
                                                                "prompt_tokens_details": details}}).encode()
        events = decode([frame({"content": "a"}, [], "stop"), line, b"data: [DONE]"], parse=False)
        return [e for e in events if isinstance(e, Usage)][0]

    assert usage({"cached_tokens": 8}).cached_tokens == 8
    assert usage({"cached_tokens": 80}).cached_tokens == 10
    assert usage({"cached_tokens": -1}).cached_tokens is None
    assert usage({"cached_tokens": "8"}).cached_tokens is None
    assert usage(None).cached_tokens is None


def test_the_upstream_request_carries_logprobs_and_priority_only_when_set() -> None:
    engine = UpstreamEngine("http://127.0.0.1:9/v1", served_model_name="m")
    wire = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    plain = engine.build_payload(gen_request("c", "m", wire))
    assert not {"logprobs", "top_logprobs", "priority"} & set(plain)
    asked = engine.build_payload(gen_request("c", "m", {**wire, "logprobs": True, "top_logprobs": 5}, priority=-3))
    assert (asked["logprobs"], asked["top_logprobs"], asked["priority"]) == (True, 5, -3)
