"""``POST /v1/chat/completions``: hand the request to the chat service's pipeline, answer JSON or SSE.

The route is thin: it makes the :class:`~unimodel.service.pipeline.Call`, lets the service run it, and writes
the result. A client that hangs up while its request waits, prefills or generates (non-streamed) cancels
the work at once; a streamed response is cancelled by Starlette when the client leaves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from unimodel.errors import UnimodelError
from unimodel.protocol.jsonbytes import dumps
from unimodel.server.errors import error_response
from unimodel.service.chat import ChatService, ClientClosedError, PreparedChat
from unimodel.service.context import RequestContext, request_id_from
from unimodel.service.pipeline import Call

router = APIRouter()

T = TypeVar("T")

_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def new_call(request: Request) -> Call:
    """The pipeline's view of an HTTP request. The body is read here, so that the disconnect watcher owns the
    receive channel afterwards; a failure to read it (over the size limit) is raised again when the parse
    stage asks for the body, so it is refused, and observed, like any other request."""
    rid = request.scope.get("state", {}).get("request_id") or request_id_from(request.headers.get("x-request-id"))
    try:
        body, failure = await request.body(), None
    except UnimodelError as exc:
        body, failure = b"", exc

    async def read_body() -> bytes:
        if failure is not None:
            raise failure
        return body

    return Call(RequestContext(rid), request.headers, read_body)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    service: ChatService = request.app.state.chat
    call = await new_call(request)
    try:
        prepared = await _unless_disconnected(request, service.prepare(call))
    except UnimodelError as exc:  # refusals carry the stages' headers too (rate-limit state, the route)
        return error_response(exc, call.response_headers)
    assert call.wire is not None
    if call.wire.stream:
        return PreparedStream(service, prepared, media_type="text/event-stream",
                              headers={**_SSE_HEADERS, **call.response_headers})
    try:
        body = await _unless_disconnected(request, service.complete(prepared))
    except UnimodelError as exc:
        return error_response(exc, call.response_headers)
    finally:
        await service.abandon(prepared)  # a no-op unless the completion never got to run
    return FastJSONResponse(body, headers=call.response_headers)


class FastJSONResponse(JSONResponse):
    """The same compact UTF-8 JSON as Starlette's, written by orjson."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


class PreparedStream(StreamingResponse):
    """The SSE response of a prepared request; if the client is gone before Starlette iterates the stream at
    all (so the service's ``finally`` never runs), the request is ended here instead."""

    def __init__(self, service: ChatService, prepared: PreparedChat, **kwargs: Any) -> None:
        super().__init__(service.stream(prepared), **kwargs)
        self._service, self._prepared = service, prepared

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._service.abandon(self._prepared)


async def _unless_disconnected(request: Request, work_coro: Coroutine[Any, Any, T]) -> T:
    """Run ``work_coro``; if the client hangs up first, cancel it (frees the engine's slot at once)."""
    work = asyncio.ensure_future(work_coro)
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
            raise ClientClosedError("client disconnected") from None
        raise


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
