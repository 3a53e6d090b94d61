"""Turn a parsed wire request into the engine's :class:`GenerationRequest` (the only thing engines see).

Model resolution and the reasoning-effort mapping live here: the model knows ``none`` and ``high``; clients
may send ``minimal``/``low``/``medium`` too, which map onto them (DESIGN.md).
"""

from __future__ import annotations

import uuid

from unimodel.engines.base import GenerationRequest, ModelEffort
from unimodel.errors import InvalidRequestError, ModelNotFoundError
from unimodel.protocol.openai import ChatCompletionRequest, ModelCard

_MODEL_EFFORT: dict[str, ModelEffort] = {
    "none": "none",
    "minimal": "none",
    "low": "high",
    "medium": "high",
    "high": "high",
}


def new_request_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def resolve_model(name: str, models: list[ModelCard]) -> ModelCard:
    for card in models:
        if card.id == name:
            return card
    known = ", ".join(c.id for c in models) or "none"
    raise ModelNotFoundError(
        f"The model '{name}' does not exist on this server (served: {known}).", param="model"
    )


def to_generation_request(
    wire: ChatCompletionRequest, models: list[ModelCard], request_id: str | None = None
) -> GenerationRequest:
    card = resolve_model(wire.model, models)
    if wire.thinking_budget is not None and wire.reasoning_effort in ("none", "minimal"):
        raise InvalidRequestError(
            f"thinking_budget needs reasoning; reasoning_effort '{wire.reasoning_effort}' turns it off.",
            param="thinking_budget",
        )
    max_tokens = wire.max_output_tokens
    if card.max_model_len is not None and max_tokens is not None and max_tokens > card.max_model_len:
        raise InvalidRequestError(
            f"max_tokens ({max_tokens}) exceeds the model's context length ({card.max_model_len}).",
            param="max_tokens",
        )
    effort = _MODEL_EFFORT[wire.reasoning_effort] if wire.reasoning_effort else None
    return GenerationRequest(
        request_id=request_id or new_request_id(),
        served_model=card.id,
        wire=wire,
        max_tokens=max_tokens,
        model_effort=effort,
        thinking_budget=wire.thinking_budget,
        include_reasoning=wire.include_reasoning is not False,
    )
