"""HTTP-free serving logic for chat completions: validate, call the engine, build the response.

The server calls :meth:`ChatService.prepare` (all client errors surface here, before any byte is sent), then
either :meth:`ChatService.complete` or :meth:`ChatService.stream_chunks`. Engine iterators are always closed,
so a client that leaves cancels the engine's work.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from unimodel.config import ReasoningPolicy
from unimodel.engines.base import Engine, GenerationRequest
from unimodel.errors import ServiceUnavailableError
from unimodel.protocol.events import Event
from unimodel.protocol.openai import ChatCompletion, ChatCompletionRequest
from unimodel.service.assemble import ChunkEncoder, CompletionBuilder, reasoning_applied
from unimodel.service.validate import to_generation_request

log = logging.getLogger("unimodel.chat")


@dataclass
class PreparedChat:
    request: GenerationRequest
    events: AsyncIterator[Event]
    first: list[Event]
    applied: dict[str, Any]  # the reasoning settings applied, known before the first token


class ChatService:
    def __init__(self, engine: Engine,
                 policy_for: Callable[[str], ReasoningPolicy] = lambda _: ReasoningPolicy(),
                 default_max_tokens: int | None = None) -> None:
        self.engine = engine
        self.policy_for = policy_for
        self.default_max_tokens = default_max_tokens

    async def prepare(self, wire: ChatCompletionRequest, request_id: str | None = None) -> PreparedChat:
        """Validate and start generation, pulling the first event so that refusals raise here."""
        models = self.engine.models()
        if not models:
            raise ServiceUnavailableError("no model is being served yet: the engine is not ready",
                                          retry_after=2)
        request = to_generation_request(wire, models, self.policy_for, request_id, self.default_max_tokens)
        events = aiter(self.engine.generate(request))
        first: list[Event] = []
        try:
            first.append(await anext(events))
        except StopAsyncIteration:
            pass
        except BaseException:
            await _close(events)
            raise
        applied = reasoning_applied(request.effort, request.model_effort, request.thinking_budget)
        return PreparedChat(request, events, first, applied)

    async def complete(self, prepared: PreparedChat) -> tuple[ChatCompletion, dict[str, Any]]:
        """The whole response, and the reasoning that was applied (for headers and the body)."""
        req = prepared.request
        builder = CompletionBuilder(include_reasoning=req.include_reasoning)
        try:
            builder.add_all(prepared.first)
            async for event in prepared.events:
                builder.add(event)
        finally:
            await _close(prepared.events)
        applied = reasoning_applied(req.effort, req.model_effort, req.thinking_budget, builder.usage,
                                    builder.truncated)
        return builder.completion(req.request_id, req.served_model), applied

    async def stream_chunks(self, prepared: PreparedChat) -> AsyncGenerator[dict[str, Any], None]:
        """Chunk payloads; an engine failure mid-stream propagates after the chunks already made."""
        req = prepared.request
        encoder = ChunkEncoder(req.request_id, req.served_model, include_reasoning=req.include_reasoning,
                               include_usage=req.wire.wants_usage_in_stream,
                               applied=prepared.applied)
        try:
            yield encoder.first()
            for event in prepared.first:
                for chunk in encoder.encode(event):
                    yield chunk
            async for event in prepared.events:
                for chunk in encoder.encode(event):
                    yield chunk
        finally:
            await _close(prepared.events)


async def _close(events: AsyncIterator[Event]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()
