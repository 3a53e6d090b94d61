"""The counting shapes (/tokenize, /detokenize, count_tokens) and the token service's fallback to an estimate."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Optional

import pytest

from tests.support.fake_engine import InMemoryEngine
from unimodel.engines.base import GenerationRequest, PromptCount
from unimodel.errors import InvalidRequestError, UnimodelError, UnsupportedFeatureError
from unimodel.protocol.events import Event
from unimodel.protocol.openai import ChatCompletionRequest
from unimodel.protocol.tokenize import MAX_DETOKENIZE_TOKENS
from unimodel.service.context import RequestContext
from unimodel.service.parse import ParseStage
from unimodel.service.pipeline import Call, Pipeline, Stage
from unimodel.service.tokens import COUNT_HEADER, DETOKENIZE, TOKEN_STRS, TokenService
from unimodel.service.validate import ValidateStage
from unimodel.shapes.tokens import CountTokensShape, DetokenizeShape, TokenizeShape

TOKENIZE = TokenizeShape(lambda: "m")
DETOKENIZE_SHAPE = DetokenizeShape(lambda: "m")


def _call(body: bytes = b"") -> Call:
    async def read() -> bytes:
        return body

    return Call(RequestContext("r1", None), {"content-type": "application/json"}, read)


def to_chat(shape: Any, data: dict[str, Any], call: Optional[Call] = None) -> ChatCompletionRequest:
    return asyncio.run(shape.to_chat(data, call or _call()))


def test_the_chat_form_is_the_chat_request_of_its_prompt() -> None:
    call = _call()
    wire = to_chat(TOKENIZE, {"messages": [{"role": "user", "content": "hi"}], "return_token_strs": True,
                              "tools": [{"type": "function", "function": {"name": "f"}}], "reasoning_effort": "high",
                              "chat_template_kwargs": {"ignored": 1}}, call)
    assert wire.model == "m" and wire.raw_prompt is None  # model left out: the served one
    assert wire.tools is not None and wire.tools[0].function.name == "f" and wire.reasoning_effort == "high"
    assert call.get(TOKEN_STRS) is True
    continued = to_chat(TOKENIZE, {"model": "x", "messages": [{"role": "assistant", "content": "a"}],
                                   "continue_final_message": True, "add_generation_prompt": False})
    assert continued.continue_final_message is True and continued.model == "x"


def test_the_prompt_form_is_a_raw_prompt() -> None:
    wire = to_chat(TOKENIZE, {"model": "m", "prompt": "hello"})
    assert wire.raw_prompt is not None and wire.raw_prompt.text == "hello" and wire.raw_prompt.add_special_tokens
    plain = to_chat(TOKENIZE, {"model": "m", "prompt": "hello", "add_special_tokens": False})
    assert plain.raw_prompt is not None and not plain.raw_prompt.add_special_tokens


@pytest.mark.parametrize(("data", "param", "error"), [
    ({"prompt": 3}, "prompt", InvalidRequestError),
    ({"prompt": "x", "messages": []}, "prompt", InvalidRequestError),
    ({"messages": [{"role": "user", "content": "x"}], "chat_template": "{{ x }}"}, "chat_template",
     UnsupportedFeatureError),
    ({"messages": [{"role": "user", "content": "x"}], "add_special_tokens": True}, "add_special_tokens",
     UnsupportedFeatureError),
    ({"messages": [{"role": "user", "content": "x"}], "add_generation_prompt": False}, "add_generation_prompt",
     UnsupportedFeatureError),
    ({"messages": [{"role": "assistant", "content": "x"}], "continue_final_message": True,
      "add_generation_prompt": True}, "add_generation_prompt", UnsupportedFeatureError),
    ({"messages": []}, "messages", InvalidRequestError),
    ({}, "messages", InvalidRequestError),
])
def test_tokenize_refusals_name_the_field(data: dict[str, Any], param: str, error: type[UnimodelError]) -> None:
    with pytest.raises(error) as caught:
        to_chat(TOKENIZE, data)
    assert caught.value.param == param


def test_no_model_and_none_served_is_a_400() -> None:
    with pytest.raises(InvalidRequestError) as caught:
        to_chat(TokenizeShape(lambda: None), {"prompt": "x"})
    assert caught.value.param == "model"


def test_detokenize_bounds_the_list_and_the_ids() -> None:
    call = _call()
    wire = to_chat(DETOKENIZE_SHAPE, {"model": "m", "tokens": [1, 2, 3]}, call)
    assert call.get(DETOKENIZE) == [1, 2, 3] and wire.raw_prompt is not None and wire.raw_prompt.text == ""
    for tokens in ([-1], [2**31], ["a"], [0] * (MAX_DETOKENIZE_TOKENS + 1), None):
        with pytest.raises(InvalidRequestError) as caught:
            to_chat(DETOKENIZE_SHAPE, {"model": "m", "tokens": tokens})
        assert caught.value.param is not None and caught.value.param.startswith("tokens")


def test_count_tokens_takes_a_messages_body_without_max_tokens() -> None:
    wire = to_chat(CountTokensShape(), {"model": "m", "system": "be brief",
                                        "messages": [{"role": "user", "content": "hi"}]})
    assert [m.role for m in wire.messages] == ["system", "user"]
    with pytest.raises(InvalidRequestError):
        to_chat(CountTokensShape(), {"model": "m"})
    body = CountTokensShape().error_body(InvalidRequestError("bad"))
    assert body == {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}


class _Counting(InMemoryEngine):
    def __init__(self, exact: bool) -> None:
        self.exact = exact
        self.asked: list[tuple[GenerationRequest, bool]] = []

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:  # pragma: no cover
        raise AssertionError("counting never generates")
        yield

    async def count_prompt(self, request: GenerationRequest, *, token_strs: bool = False) -> Optional[PromptCount]:
        self.asked.append((request, token_strs))
        return PromptCount(3, True, [1, 2, 3], 100, ["a", "b", "c"] if token_strs else None) if self.exact else None


class _Exits(Stage):
    name = "exits"

    def __init__(self) -> None:
        self.errors: list[Optional[BaseException]] = []

    async def exit(self, call: Call, error: Optional[BaseException]) -> None:
        self.errors.append(error)


def _service(engine: InMemoryEngine) -> tuple[TokenService, _Exits]:
    exits = _Exits()
    return TokenService(engine, Pipeline([exits, ParseStage(), ValidateStage(engine.models)])), exits


def test_the_service_counts_with_the_engine_and_says_exact() -> None:
    engine = _Counting(exact=True)
    service, exits = _service(engine)
    call = _call(b'{"prompt": "hello", "return_token_strs": true}')
    call.shape = TOKENIZE
    counted = asyncio.run(service.count(call))
    assert (counted.count, counted.tokens, counted.token_strs) == (3, [1, 2, 3], ["a", "b", "c"])
    assert call.response_headers[COUNT_HEADER] == "exact" and exits.errors == [None]
    request, strs = engine.asked[0]
    assert request.raw_prompt is not None and request.raw_prompt.text == "hello" and strs


def test_without_an_exact_count_the_estimate_says_so() -> None:
    service, exits = _service(_Counting(exact=False))
    call = _call(b'{"messages": [{"role": "user", "content": "' + b"word " * 40 + b'"}]}')
    call.shape = TOKENIZE
    counted = asyncio.run(service.count(call))
    assert not counted.exact and counted.tokens is None and counted.max_model_len == 100_000
    assert 40 <= counted.count <= 80  # 200 bytes at four a token, and the message's own
    assert call.response_headers[COUNT_HEADER] == "estimate" and exits.errors == [None]


def test_a_refusal_still_exits_the_stages_entered() -> None:
    service, exits = _service(_Counting(exact=True))
    call = _call(b'{"model": "nope", "prompt": "x"}')
    call.shape = TOKENIZE
    with pytest.raises(UnimodelError) as caught:
        asyncio.run(service.count(call))
    assert caught.value.status_code == 404 and exits.errors == [caught.value]


def test_detokenize_without_an_engine_tokenizer_is_refused() -> None:
    service, _ = _service(_Counting(exact=True))
    call = _call(b'{"tokens": [1]}')
    call.shape = DETOKENIZE_SHAPE
    with pytest.raises(UnsupportedFeatureError):
        asyncio.run(service.detokenize(call))
