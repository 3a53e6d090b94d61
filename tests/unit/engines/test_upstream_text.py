"""The upstream engine's raw prompts (``/v1/completions``) and token endpoints, as payloads and answers."""

from __future__ import annotations

import json

import pytest

from unimodel.engines.base import GenerationRequest, SamplingOptions
from unimodel.engines.upstream import UpstreamEngine, _no_such_endpoint
from unimodel.engines.upstream_text import (
    TextCompletionDecoder,
    completion_payload,
    read_detokenize_answer,
    read_tokenize_answer,
    tokenize_payload,
)
from unimodel.errors import UpstreamError
from unimodel.formats.registry import get_format
from unimodel.protocol.events import ContentDelta, Finish, Usage
from unimodel.protocol.openai import Message, RawPrompt


def _raw(text: str = "Once", **kw: object) -> GenerationRequest:
    return GenerationRequest("chatcmpl-1", "m", [Message(role="user", content=text)],
                             raw_prompt=RawPrompt(text, bool(kw.pop("special", True))), **kw)  # type: ignore[arg-type]


def test_a_raw_prompt_goes_out_as_a_completions_request() -> None:
    request = _raw(max_tokens=7, streamed=False, user="u",
                   sampling=SamplingOptions(temperature=0.1, stop=("x",), seed=4, logprobs=True, top_logprobs=2))
    assert completion_payload(request, "up") == {
        "model": "up", "prompt": "Once", "stream": False, "max_tokens": 7, "user": "u", "temperature": 0.1,
        "stop": ["x"], "seed": 4, "logprobs": 2}
    streamed = completion_payload(_raw(special=False), "up")
    assert streamed["stream_options"] == {"include_usage": True} and streamed["add_special_tokens"] is False
    assert "messages" not in streamed and "skip_special_tokens" not in streamed


def test_tokenize_carries_what_chat_would_render() -> None:
    chat_request = GenerationRequest("chatcmpl-1", "m", [Message(role="developer", content="be brief"),
                                                         Message(role="user", content="hi")], model_effort="high")
    engine = UpstreamEngine("http://127.0.0.1:9/v1", served_model_name="m", upstream_model="up")
    body = tokenize_payload(chat_request, "up", engine.build_payload(chat_request), token_strs=True)
    assert body == {"model": "up", "messages": [{"role": "system", "content": "be brief"},
                                                {"role": "user", "content": "hi"}],
                    "chat_template_kwargs": {"reasoning_effort": "high"}, "return_token_strs": True}
    assert tokenize_payload(_raw("p", special=False), "up", None, False) == {
        "model": "up", "prompt": "p", "add_special_tokens": False}
    assert engine.root_url == "http://127.0.0.1:9"


def test_token_answers_are_checked() -> None:
    assert read_tokenize_answer({"count": 2, "tokens": [1, 2], "max_model_len": 9}) == ([1, 2], 9, None)
    assert read_detokenize_answer({"prompt": "hi"}) == "hi"
    for bad in ([], {"tokens": ["a"]}, {"tokens": [True]}, {"count": 1}):
        with pytest.raises(UpstreamError):
            read_tokenize_answer(bad)
    with pytest.raises(UpstreamError):
        read_detokenize_answer({"prompt": 3})


def test_an_endpoint_is_missing_only_when_the_server_has_no_route() -> None:
    assert _no_such_endpoint(404, b'{"detail": "Not Found"}') and _no_such_endpoint(404, b"nope")
    assert _no_such_endpoint(405, b"") and _no_such_endpoint(501, b"")
    assert not _no_such_endpoint(404, b'{"error": {"message": "The model `x` does not exist."}}')
    assert not _no_such_endpoint(400, b"")


def test_text_completion_frames_are_read_as_content() -> None:
    decoder = TextCompletionDecoder(get_format("mistral"), parse_content=False)
    events = []
    for frame in ({"choices": [{"index": 0, "text": "[THINK]a", "finish_reason": None}]},
                  {"choices": [{"index": 0, "text": "b", "finish_reason": "length"}]},
                  {"choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}}):
        events += decoder.sse_line(b"data: " + json.dumps(frame).encode())
    decoder.sse_line(b"data: [DONE]")
    events += decoder.close()
    assert events == [ContentDelta("[THINK]a"), ContentDelta("b"), Usage(2, 2, 0), Finish("length")]


def test_a_whole_text_completion_is_read_too() -> None:
    decoder = TextCompletionDecoder(get_format("mistral"), parse_content=False)
    events = decoder.whole_body(json.dumps({"choices": [{"index": 0, "text": "hey", "finish_reason": "stop"}],
                                            "usage": {"prompt_tokens": 1, "completion_tokens": 1}}).encode())
    assert events[0] == ContentDelta("hey") and events[-1] == Finish("stop")
    with pytest.raises(UpstreamError):
        TextCompletionDecoder(get_format("mistral"), parse_content=False).whole_body(b'{"choices": []}')


def test_the_supervised_vllm_counts_through_its_upstream_once_it_serves() -> None:
    import asyncio

    from unimodel.engines.base import PromptCount
    from unimodel.engines.vllm import VllmEngine
    from unimodel.errors import ServiceUnavailableError

    class _Upstream(UpstreamEngine):
        async def count_prompt(self, request: GenerationRequest, *, token_strs: bool = False) -> PromptCount:
            return PromptCount(2, True, [5, 6])

        async def detokenize(self, model: str, tokens: list[int]) -> str:
            return "ab"

    engine = VllmEngine(["vllm", "serve", "m"], port=9, served_model_name="m",
                        upstream=_Upstream("http://127.0.0.1:9/v1", served_model_name="m"))
    with pytest.raises(ServiceUnavailableError):
        asyncio.run(engine.count_prompt(_raw()))
    engine._ready.set()
    assert asyncio.run(engine.count_prompt(_raw())) == PromptCount(2, True, [5, 6])
    assert asyncio.run(engine.detokenize("m", [5, 6])) == "ab"


def test_legacy_logprobs_are_read_as_chat_logprobs() -> None:
    from unimodel.protocol.events import Logprobs

    decoder = TextCompletionDecoder(get_format("mistral"), parse_content=False, logprobs=True)
    frame = {"choices": [{"index": 0, "text": "ab", "finish_reason": "stop",
                          "logprobs": {"tokens": ["a", "b"], "token_logprobs": [-0.5, None],
                                       "top_logprobs": [{"a": -0.5, "c": -2.0}, None], "text_offset": [0, 1]}}]}
    events = decoder.sse_line(b"data: " + json.dumps(frame).encode())
    lp = next(e for e in events if isinstance(e, Logprobs))
    assert [(t.token, t.logprob) for t in lp.tokens] == [("a", -0.5), ("b", -9999.0)]
    assert [(a.token, a.logprob) for a in lp.tokens[0].top] == [("a", -0.5), ("c", -2.0)]
