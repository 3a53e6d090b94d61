"""Build the engines' validated request the way the server does (tests used to pass the wire request)."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from unimodel.engines.base import GenerationRequest
from unimodel.protocol.openai import ChatCompletionRequest, ModelCard
from unimodel.service.validate import to_generation_request


def gen_request(completion_id: str, served_model: str, wire: ChatCompletionRequest | dict[str, Any],
                max_tokens: Optional[int] = None, **overrides: Any) -> GenerationRequest:
    """``to_generation_request`` over one served model, then ``overrides`` (e.g. ``model_effort``) applied."""
    if isinstance(wire, dict):
        wire = ChatCompletionRequest.model_validate(wire)
    request = to_generation_request(wire, [ModelCard(id=wire.model)], completion_id=completion_id)
    return dataclasses.replace(request, served_model=served_model, max_tokens=max_tokens, **overrides)
