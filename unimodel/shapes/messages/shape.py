"""The Messages shape: what ``POST /v1/messages`` plugs into the one pipeline (``service/shape.py``).

A request is validated as Anthropic's (:mod:`unimodel.protocol.anthropic`, so a mistake is named in its own
terms: ``messages[1].content[0].tool_use_id``), then translated into the chat request every stage reads
(:mod:`.convert`); limits, quotas, idempotency, the request log and the metrics then cannot tell it from chat.
The answer is an Anthropic Message, or its event stream (:mod:`.stream`); an error is Anthropic's body,
``{"type": "error", "error": {"type", "message"}}``, with the type the official SDK and Anthropic's error page
give each status (:func:`error_type`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from unimodel.errors import UnimodelError
from unimodel.protocol import anthropic as wire
from unimodel.protocol.openai import ChatCompletionRequest
from unimodel.service.errors import validation_to_error
from unimodel.service.shape import ApiShape
from unimodel.shapes.messages.convert import (
    count_tokens_chat_request,
    message_body,
    message_id,
    to_chat_request,
)
from unimodel.shapes.messages.stream import MessagesStreamWriter

if TYPE_CHECKING:
    from unimodel.service.pipeline import Call

#: Anthropic's error type per HTTP status (its error page and the SDK's ``ErrorType``); any other 4xx is an
#: ``invalid_request_error`` (as Anthropic says it does), any other 5xx an ``api_error``
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",  # the SDK's ErrorType has it (an idempotency key reused or in use)
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",  # the engine's queue is full, it is not ready, a breaker is open: retry later
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    known = _ERROR_TYPES.get(status)
    if known is not None:
        return known
    return "invalid_request_error" if status < 500 else "api_error"


def _chat(data: dict[str, Any]) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:  # what only the chat request checks (rare: the wire type checks first)
        raise validation_to_error(exc) from None


class MessagesShape(ApiShape):
    """Anthropic's Messages API."""

    name = "messages"

    async def to_chat(self, data: dict[str, Any], call: "Call | None" = None) -> ChatCompletionRequest:
        """The chat request for a Messages request (``call`` is not needed: this shape keeps no state)."""
        try:
            request = wire.MessagesRequest.model_validate(data)
        except ValidationError as exc:
            raise validation_to_error(exc) from None
        return _chat(to_chat_request(request))

    @staticmethod
    def count_tokens_chat(data: dict[str, Any]) -> ChatCompletionRequest:
        """The chat request whose prompt a ``count_tokens`` request counts (its body has no ``max_tokens``;
        the prompt is built exactly as :meth:`to_chat` builds it)."""
        try:
            request = wire.CountTokensRequest.model_validate(data)
        except ValidationError as exc:
            raise validation_to_error(exc) from None
        return _chat(count_tokens_chat_request(request))

    def body(self, completion: dict[str, Any], call: "Call") -> dict[str, Any]:
        return message_body(completion)

    def stream_writer(self, call: "Call") -> MessagesStreamWriter:
        request = call.require_engine_request()
        return MessagesStreamWriter(message_id(request.completion_id), request.served_model, self.error_body,
                                    include_reasoning=request.include_reasoning)

    def error_body(self, error: UnimodelError) -> dict[str, Any]:
        return {"type": "error", "error": {"type": error_type(error.status_code), "message": error.message}}


MESSAGES = MessagesShape()
