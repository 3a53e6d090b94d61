"""Turn a parsed wire request into the engine's :class:`GenerationRequest` (the only thing engines see).

Model resolution and the reasoning-effort mapping live here: the model knows ``none`` and ``high``; clients
may send ``minimal``/``low``/``medium`` too, which map onto them with a thinking budget, by the served
model's :class:`ReasoningPolicy` (DESIGN.md). Engines enforce the budget.
"""

from __future__ import annotations

import uuid

from collections.abc import Callable

from unimodel.config import ReasoningPolicy
from unimodel.engines.base import GenerationRequest
from unimodel.errors import InvalidRequestError, ModelNotFoundError
from unimodel.protocol.openai import ChatCompletionRequest, ModelCard

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
    wire: ChatCompletionRequest,
    models: list[ModelCard],
    policy_for: Callable[[str], ReasoningPolicy] = lambda _: ReasoningPolicy(),
    request_id: str | None = None,
    default_max_tokens: int | None = None,
) -> GenerationRequest:
    card = resolve_model(wire.model, models)
    policy = policy_for(card.id)
    effort = wire.reasoning_effort or policy.default_effort
    model_effort = policy.model_effort.get(effort, "high" if effort in ("low", "medium", "high") else "none")
    if wire.thinking_budget is not None and model_effort == "none":
        raise InvalidRequestError(
            f"thinking_budget needs reasoning, and reasoning_effort '{effort}' turns it off; "
            "send reasoning_effort low, medium or high with it.",
            param="thinking_budget",
        )
    max_tokens = wire.max_output_tokens
    if max_tokens is None and default_max_tokens is not None:
        max_tokens = default_max_tokens if card.max_model_len is None else min(default_max_tokens,
                                                                                card.max_model_len)
    if card.max_model_len is not None and max_tokens is not None and max_tokens > card.max_model_len:
        raise InvalidRequestError(
            f"max_tokens ({max_tokens}) exceeds the model's context length ({card.max_model_len}).",
            param="max_tokens",
        )
    budget = wire.thinking_budget if wire.thinking_budget is not None else policy.budgets.get(effort)
    return GenerationRequest(
        request_id=request_id or new_request_id(),
        served_model=card.id,
        wire=wire,
        max_tokens=max_tokens,
        effort=effort,
        model_effort=model_effort,
        thinking_budget=budget if model_effort == "high" else None,
        include_reasoning=wire.include_reasoning if wire.include_reasoning is not None
        else policy.include_reasoning,
    )
