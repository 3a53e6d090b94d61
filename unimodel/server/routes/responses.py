"""The stored responses' routes: ``GET``/``DELETE /v1/responses/{id}``, ``POST /v1/responses/{id}/cancel``,
``GET /v1/responses/{id}/input_items``.

Thin: each authenticates through the auth stage's own pipeline (``app.state.responses_pipeline``, the same stage
object as the API's: a missing or wrong key is the same 401, and the caller's key name is the owner every lookup
is made for), then asks :class:`~unimodel.shapes.responses.stored.StoredResponses` (``app.state.responses_api``).
Errors leave in OpenAI's shape through the app's handlers.
"""

from __future__ import annotations

from typing import Any, Optional

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from unimodel.errors import InvalidRequestError
from unimodel.server.routes.calls import authenticated
from unimodel.shapes.responses.stored import DEFAULT_LIST_LIMIT, StoredResponses

router = APIRouter()


async def _owner(request: Request) -> str:
    call = await authenticated(request, request.app.state.responses_pipeline)
    return call.ctx.key_name or "anonymous"


def _api(request: Request) -> StoredResponses:
    return request.app.state.responses_api


def _json(body: dict[str, Any]) -> JSONResponse:
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.get("/v1/responses/{response_id}")
async def retrieve(response_id: str, request: Request, stream: Optional[str] = None) -> JSONResponse:
    owner = await _owner(request)
    if stream is not None and stream.lower() not in ("false", "0"):
        raise InvalidRequestError("Streaming a stored response (stream=true) is not supported: retrieve it without "
                                  "'stream', and poll a background response until it is done.", param="stream")
    return _json(await _api(request).retrieve(owner, response_id))


@router.delete("/v1/responses/{response_id}")
async def delete(response_id: str, request: Request) -> JSONResponse:
    owner = await _owner(request)
    return _json(await _api(request).delete(owner, response_id))


@router.post("/v1/responses/{response_id}/cancel")
async def cancel(response_id: str, request: Request) -> JSONResponse:
    owner = await _owner(request)
    return _json(await _api(request).cancel(owner, response_id))


@router.get("/v1/responses/{response_id}/input_items")
async def input_items(response_id: str, request: Request, limit: Optional[str] = None, order: Optional[str] = None,
                      after: Optional[str] = None) -> JSONResponse:
    owner = await _owner(request)  # before the query is judged: no answer but a 401 without a key
    try:
        count = DEFAULT_LIST_LIMIT if limit is None else int(limit)
    except ValueError:
        raise InvalidRequestError("'limit' is a whole number.", param="limit") from None
    if order not in (None, "asc", "desc"):
        raise InvalidRequestError("'order' is 'asc' or 'desc'.", param="order")
    return _json(await _api(request).input_items(owner, response_id, limit=count,
                                                 order="asc" if order == "asc" else "desc", after=after))
