"""``POST /v1/chat/completions``: parse, hand to the chat service, answer JSON or SSE."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from unimodel.errors import InvalidRequestError, UnimodelError
from unimodel.protocol.openai import ChatCompletion, ChatCompletionRequest
from unimodel.protocol.sse import DONE, frame
from unimodel.server.auth import check_api_key
from unimodel.server.errors import validation_to_error
from unimodel.service.assemble import reasoning_header
from unimodel.service.chat import ChatService, PreparedChat

REASONING_HEADER = "X-Unimodel-Reasoning"

log = logging.getLogger("unimodel.server")
router = APIRouter()


async def parse_chat_request(request: Request) -> ChatCompletionRequest:
    body = await request.body()
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise validation_to_error(exc) from exc


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    check_api_key(request, request.app.state.settings.api_keys)
    wire = await parse_chat_request(request)
    service: ChatService = request.app.state.chat
    prepared = await service.prepare(wire, request_id=None)
    if wire.stream:
        return StreamingResponse(_sse(service, prepared), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no",
                                          REASONING_HEADER: reasoning_header(prepared.applied)})
    completion, applied = await _complete_unless_disconnected(request, service, prepared)
    body = completion.model_dump(mode="json")
    body["unimodel_reasoning"] = applied
    return JSONResponse(body, headers={REASONING_HEADER: reasoning_header(applied)})


async def _sse(service: ChatService, prepared: PreparedChat) -> AsyncIterator[bytes]:
    """Chunks as SSE; a failure mid-stream ends it with an error frame, never a hang.

    Starlette cancels this generator when the client disconnects; the service's ``finally`` then closes the
    engine iterator, which cancels the engine's work.
    """
    chunks = service.stream_chunks(prepared)
    try:
        async for chunk in chunks:
            yield frame(chunk)
    except UnimodelError as exc:
        log.warning("stream %s failed: %s", prepared.request.request_id, exc.message)
        yield frame(exc.to_dict())
    except Exception:
        log.exception("stream %s failed", prepared.request.request_id)
        yield frame(UnimodelError("The server had an internal error; it is logged.").to_dict())
    finally:
        await chunks.aclose()
    yield DONE


async def _complete_unless_disconnected(request: Request, service: ChatService,
                                        prepared: PreparedChat) -> tuple[ChatCompletion, dict[str, Any]]:
    """Run the engine; if the client hangs up first, cancel it (frees the engine's slot at once)."""
    work = asyncio.ensure_future(service.complete(prepared))
    gone = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
    try:
        return await work
    except asyncio.CancelledError:
        if gone.done() and not gone.cancelled():
            raise UnimodelError("client disconnected", status_code=499, code="client_closed") from None
        raise


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
