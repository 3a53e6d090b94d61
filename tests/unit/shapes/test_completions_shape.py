"""The completions shape: a raw prompt into the one chat request, and ``text_completion`` bodies and streams back."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from unimodel.errors import InvalidRequestError, UnimodelError, UnsupportedFeatureError
from unimodel.protocol.events import ContentDelta, Finish, Logprobs, TokenLogprob, TopLogprob, Usage
from unimodel.protocol.openai import ChatCompletionRequest, ModelCard
from unimodel.service.context import RequestContext
from unimodel.service.pipeline import Call
from unimodel.service.validate import to_generation_request
from unimodel.shapes.completions import COMPLETIONS, CompletionStreamWriter, completion_id


def _call() -> Call:
    async def body() -> bytes:
        return b""

    return Call(RequestContext("r1", None), {}, body)


def to_chat(data: dict[str, Any], call: Call | None = None) -> ChatCompletionRequest:
    return asyncio.run(COMPLETIONS.to_chat(data, call or _call()))


def test_a_prompt_becomes_a_raw_prompt_with_the_api_defaults() -> None:
    wire = to_chat({"model": "m", "prompt": "Once upon", "temperature": 0.5, "stop": ["\n"], "seed": 3})
    assert wire.raw_prompt is not None and wire.raw_prompt.text == "Once upon" and wire.raw_prompt.add_special_tokens
    assert wire.max_tokens == 16  # OpenAI's and vLLM's default for completions
    assert [m.text() for m in wire.messages] == ["Once upon"] and wire.messages[0].role == "user"
    assert (wire.temperature, wire.stop, wire.seed, wire.tools) == (0.5, ["\n"], 3, None)
    assert to_chat({"model": "m", "prompt": ["only one"], "max_tokens": None}).max_tokens == 16
    assert not to_chat({"model": "m", "prompt": "x", "add_special_tokens": False}).raw_prompt.add_special_tokens  # type: ignore[union-attr]


def test_the_validated_request_is_a_raw_prompt_told_no_level() -> None:
    wire = to_chat({"model": "m", "prompt": "p", "max_tokens": 5})
    request = to_generation_request(wire, [ModelCard(id="m", max_model_len=100)])
    assert request.raw_prompt is not None and request.raw_prompt.text == "p"
    assert (request.model_effort, request.thinking_budget, request.tools, request.max_tokens) == (None, None, None, 5)


def test_a_client_cannot_set_the_raw_prompt_through_json() -> None:
    wire = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                                 "_raw_prompt": {"text": "evil"}})
    assert wire.raw_prompt is None
    request = to_generation_request(wire, [ModelCard(id="m")])
    assert request.raw_prompt is None


@pytest.mark.parametrize(("data", "param", "error"), [
    ({"prompt": ["a", "b"]}, "prompt", UnsupportedFeatureError),
    ({"prompt": [1, 2, 3]}, "prompt", UnsupportedFeatureError),
    ({"prompt": [[1, 2]]}, "prompt", UnsupportedFeatureError),
    ({"prompt": []}, "prompt", InvalidRequestError),
    ({"prompt": "x", "suffix": "y"}, "suffix", UnsupportedFeatureError),
    ({"prompt": "x", "n": 2}, "n", UnsupportedFeatureError),
    ({"prompt": "x", "best_of": 3}, "best_of", UnsupportedFeatureError),
    ({"prompt": "x", "echo": True, "logprobs": 2}, "echo", UnsupportedFeatureError),
    ({"prompt": "x", "logprobs": 21}, "logprobs", InvalidRequestError),
    ({"prompt": "x", "messages": [{"role": "user", "content": "y"}]}, "messages", InvalidRequestError),
    ({"prompt": "x", "tools": []}, "tools", InvalidRequestError),
    ({"prompt": "x", "max_tokens": 0}, "max_tokens", InvalidRequestError),
    ({}, "prompt", InvalidRequestError),
])
def test_what_is_refused_is_named(data: dict[str, Any], param: str, error: type[UnimodelError]) -> None:
    with pytest.raises(error) as caught:
        to_chat({"model": "m", **data})
    assert caught.value.param == param and caught.value.status_code == 400


def test_logprobs_become_chat_logprobs() -> None:
    wire = to_chat({"model": "m", "prompt": "x", "logprobs": 3})
    assert (wire.logprobs, wire.top_logprobs) == (True, 3)


def _completion(content: str, logprobs: Any = None) -> dict[str, Any]:
    return {"id": "chatcmpl-abc", "object": "chat.completion", "created": 7, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "length",
                         "logprobs": logprobs}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5,
                      "completion_tokens_details": {"reasoning_tokens": 0}}}


def test_the_body_is_a_text_completion_with_the_echoed_prompt() -> None:
    call = _call()
    asyncio.run(COMPLETIONS.to_chat({"model": "m", "prompt": "Say: ", "echo": True}, call))
    body = COMPLETIONS.body(_completion("hi"), call)
    assert body == {"id": "cmpl-abc", "object": "text_completion", "created": 7, "model": "m",
                    "choices": [{"index": 0, "text": "Say: hi", "finish_reason": "length", "logprobs": None}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def test_chat_logprobs_become_the_legacy_form() -> None:
    call = _call()
    asyncio.run(COMPLETIONS.to_chat({"model": "m", "prompt": "p", "logprobs": 1}, call))
    entries = [{"token": "h", "logprob": -0.5, "bytes": [104], "top_logprobs": [{"token": "h", "logprob": -0.5}]},
               {"token": "ey", "logprob": -1.0, "bytes": None, "top_logprobs": [{"token": "o", "logprob": -0.1}]}]
    body = COMPLETIONS.body(_completion("hey", {"content": entries}), call)
    assert body["choices"][0]["logprobs"] == {"tokens": ["h", "ey"], "token_logprobs": [-0.5, -1.0],
                                              "top_logprobs": [{"h": -0.5}, {"o": -0.1}], "text_offset": [0, 1]}


def _frames(data: bytes) -> list[Any]:
    out = []
    for block in data.decode().split("\n\n"):
        if block:
            assert block.startswith("data: ")
            payload = block[len("data: "):]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def test_the_stream_is_text_completion_chunks_then_usage_then_done() -> None:
    writer = CompletionStreamWriter("cmpl-1", "m", 5, "Q: ", include_usage=True)
    data = writer.opening([ContentDelta("A")]) + writer.write([ContentDelta("B"), ContentDelta("C")])
    data += writer.closing([Usage(3, 3), Finish("stop")], None)
    frames = _frames(data)
    assert frames[-1] == "[DONE]"
    texts = [f["choices"][0]["text"] for f in frames[:-1] if f["choices"]]
    assert "".join(texts) == "Q: ABC" and texts[0] == "Q: "
    assert frames[-3]["choices"][0]["finish_reason"] == "stop"
    assert frames[-2] == {"id": "cmpl-1", "object": "text_completion", "created": 5, "model": "m", "choices": [],
                          "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}
    assert all(f["object"] == "text_completion" and f["id"] == "cmpl-1" for f in frames[:-1])


def test_a_stream_carries_each_texts_logprobs_in_its_chunk() -> None:
    writer = CompletionStreamWriter("cmpl-1", "m", 5, "", include_usage=False)
    lp = Logprobs((TokenLogprob("ab", -0.25, None, (TopLogprob("ab", -0.25),)),))
    frames = _frames(writer.opening([ContentDelta("x"), Logprobs((TokenLogprob("x", -1.0),))])
                     + writer.closing([ContentDelta("ab"), lp, Usage(1, 2), Finish("length")], None))
    assert frames[0]["choices"][0]["text"] == "x"
    assert frames[0]["choices"][0]["logprobs"]["tokens"] == ["x"]
    assert frames[1]["choices"][0]["logprobs"] == {"tokens": ["ab"], "token_logprobs": [-0.25],
                                                   "top_logprobs": [{"ab": -0.25}], "text_offset": [1]}
    assert frames[2]["choices"][0]["finish_reason"] == "length" and frames[-1] == "[DONE]"
    assert len(frames) == 4  # no usage chunk: not asked


def test_a_failure_midway_is_an_error_frame_before_done() -> None:
    writer = CompletionStreamWriter("cmpl-1", "m", 5, "", include_usage=True)
    frames = _frames(writer.opening([ContentDelta("x")]) + writer.closing([], UnimodelError("boom")))
    assert frames[-2]["error"]["message"] == "boom" and frames[-1] == "[DONE]"


def test_the_id_keeps_the_requests_hex() -> None:
    assert completion_id("chatcmpl-0123") == "cmpl-0123"
