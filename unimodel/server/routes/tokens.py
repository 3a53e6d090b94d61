"""``POST /tokenize``, ``POST /detokenize`` (vLLM's) and ``POST /v1/messages/count_tokens`` (Anthropic's): thin
ASGI endpoints over the token service (``service/tokens.py``), which runs the counting stages; the shape
(``shapes/tokens.py``) reads the body, this module writes the answer.

Answers: ``/tokenize`` ``{"count", "max_model_len", "tokens", "token_strs"?}`` (``tokens`` is ``null`` when the
count is an estimate), ``/detokenize`` ``{"prompt"}``, ``count_tokens`` ``{"input_tokens"}``; each count with
``X-Unimodel-Token-Count: exact|estimate``. A refusal is the shape's error body (Anthropic's for
``count_tokens``) with the stages' headers (the route, rate-limit state).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Optional

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from unimodel.engines.base import PromptCount
from unimodel.errors import UnimodelError
from unimodel.server.routes.calls import new_call
from unimodel.service.pipeline import Call
from unimodel.service.shape import ApiShape
from unimodel.service.tokens import TokenService
from unimodel.shapes.tokens import CountTokensShape, DetokenizeShape, TokenizeShape

TOKENIZE_PATH = "/tokenize"
DETOKENIZE_PATH = "/detokenize"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"

Answer = Callable[[TokenService, Call], Awaitable[dict[str, Any]]]


async def _tokenize(service: TokenService, call: Call) -> dict[str, Any]:
    counted = await service.count(call)
    body: dict[str, Any] = {"count": counted.count, "max_model_len": counted.max_model_len, "tokens": counted.tokens}
    if counted.token_strs is not None:
        body["token_strs"] = counted.token_strs
    return body


async def _detokenize(service: TokenService, call: Call) -> dict[str, Any]:
    return {"prompt": await service.detokenize(call)}


async def _count_tokens(service: TokenService, call: Call) -> dict[str, Any]:
    counted: PromptCount = await service.count(call)
    return {"input_tokens": counted.count}


class TokenEndpoint:
    """The ASGI app of one counting route; the token service is the app's (``app.state.tokens``)."""

    def __init__(self, shape: ApiShape, answer: Answer) -> None:
        self.shape = shape
        self.answer = answer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        call = new_call(scope, request.body)
        call.shape = self.shape
        service: TokenService = scope["app"].state.tokens
        try:
            body = await self.answer(service, call)
        except UnimodelError as exc:
            response = JSONResponse(self.shape.error_body(exc), status_code=exc.status_code,
                                    headers={**call.response_headers, **exc.headers()})
        else:
            response = JSONResponse(body, headers=call.response_headers)
        await response(scope, receive, send)


def endpoints(default_model: Callable[[], Optional[str]]) -> list[tuple[str, TokenEndpoint]]:
    """The counting routes by path; ``default_model``: the model a ``/tokenize`` without ``model`` means."""
    return [(TOKENIZE_PATH, TokenEndpoint(TokenizeShape(default_model), _tokenize)),
            (DETOKENIZE_PATH, TokenEndpoint(DetokenizeShape(default_model), _detokenize)),
            (COUNT_TOKENS_PATH, TokenEndpoint(CountTokensShape(), _count_tokens))]
