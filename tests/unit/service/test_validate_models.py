"""The validate stage asks the engine for its served models at most once per ``models_ttl_s``, yet serves a
model discovered since at once, waits for no engine that served none, and sees a changed context length."""

from __future__ import annotations

import asyncio
from typing import Any, Optional

import pytest

from unimodel.errors import InvalidRequestError, ModelNotFoundError, ServiceUnavailableError
from unimodel.protocol.openai import ChatCompletionRequest, ModelCard
from unimodel.service.context import RequestContext
from unimodel.service.pipeline import Call
from unimodel.service.validate import ValidateStage


class Served:
    """What an engine's ``models()`` gives: built anew on each call (as the engines do), counted."""

    def __init__(self, **models: Optional[int]) -> None:
        self.models = dict(models)
        self.calls = 0

    def __call__(self) -> list[ModelCard]:
        self.calls += 1
        return [ModelCard(id=name, max_model_len=limit) for name, limit in self.models.items()]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def validate(stage: ValidateStage, model: str = "m", **fields: Any) -> Call:
    async def unused() -> bytes:
        return b""

    call = Call(RequestContext("r"), {}, unused)
    call.client_request = ChatCompletionRequest.model_validate(
        {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields})
    asyncio.run(stage.enter(call))
    return call


def test_the_models_are_asked_once_per_ttl_not_per_request() -> None:
    served, clock = Served(m=1000), Clock()
    stage = ValidateStage(served, clock=clock)
    for _ in range(5):
        assert validate(stage).require_engine_request().served_model == "m"
    assert served.calls == 1
    clock.now += stage.models_ttl_s
    validate(stage)
    assert served.calls == 2


def test_a_model_discovered_since_is_served_at_once() -> None:
    served, clock = Served(m=1000), Clock()
    stage = ValidateStage(served, clock=clock)
    validate(stage)
    served.models["new"] = 500
    assert validate(stage, "new").require_engine_request().served_model == "new"  # no wait for the ttl
    with pytest.raises(ModelNotFoundError):
        validate(stage, "unknown")


def test_an_engine_that_served_nothing_is_asked_again_on_the_next_request() -> None:
    served, clock = Served(), Clock()
    stage = ValidateStage(served, clock=clock)
    with pytest.raises(ServiceUnavailableError):
        validate(stage)
    served.models["m"] = 1000  # the engine became ready
    assert validate(stage).require_engine_request().served_model == "m"


def test_a_changed_context_length_is_seen_after_the_ttl() -> None:
    served, clock = Served(m=1000), Clock()
    stage = ValidateStage(served, clock=clock)
    validate(stage, max_tokens=800)
    served.models["m"] = 500  # the upstream's probe found a smaller context
    clock.now += stage.models_ttl_s
    with pytest.raises(InvalidRequestError) as refused:
        validate(stage, max_tokens=800)
    assert refused.value.param == "max_tokens"
