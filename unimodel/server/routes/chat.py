"""The API routes (``POST /v1/chat/completions`` and the other shapes' routes) as plain ASGI endpoints: hand the
request to the chat service, write the result.

Each route is an :class:`ApiEndpoint` over one API shape (``service/shape.py``): the chat completions, the
Responses API, Anthropic's Messages API. The shape turns the body into the one chat request the pipeline runs
and the events back into its own answer; this module only moves bytes, the same way for every shape.

The route is thin: it makes the :class:`~unimodel.service.pipeline.Call`, lets the service run it, and writes
the result, JSON or SSE. It is written against ASGI directly, not as a FastAPI handler returning a
``StreamingResponse``: on the hottest path of the server that skips request-object construction, dependency
resolution and a task group per stream, and it writes each of the service's chunks (one per engine
``Flush``) as one body message. Measured with ``benchmarks/gateway_overhead.py``.

A request a shape runs on its own (the Responses API's ``background: true``, :meth:`ApiShape.detaches`) is admitted
the same way, then answered at once with what :meth:`ApiShape.detach` gives; from then on its end is the shape's,
and its client may leave.

The body is read only when the pipeline asks for it (the parse stage's ``call.read_body()``), never before:
a request refused by an earlier stage (no key, a wrong key) is answered without its body being read, so a
client without a key cannot make the server wait for, or buffer, up to ``--max-request-bytes``. The body-size
middleware still refuses a body over the limit, by its Content-Length up front or while it is read.

Disconnects: one watcher task waits for ``http.disconnect`` while the request runs, from the moment the body
is read (it then owns the receive channel; nothing reads it twice at once; a client that leaves while its
body is read is seen by the read, a 499 all the same). If the client leaves while its request waits,
prefills or generates, the watcher cancels this request's task, which closes the engine stream (freeing the
slot or the upstream connection) and ends the request as 499; the cancellation is absorbed here, so the
server never sees it. The watcher is stopped before the last body message, so a response that completes is
never mistaken for a client that left.

Stalled clients: a streamed answer's writes fail rather than wait forever (``server/connections.py``,
``server/writes.py``): a client that takes (next to) nothing for ``--stream-write-timeout-s``, or one still not
reading when the request's total timeout (the resilience stage's deadline) passes, makes the waiting ``send``
raise; that error is thrown into the service's stream, which ends the request with it (499
``client_write_timeout``, or the 504 of the total timeout: engine stream closed, stages released, logged), and
the connection is dropped.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any, Optional

from starlette.types import Message, Receive, Scope, Send

from unimodel.errors import ClientClosedError, UnimodelError
from unimodel.gateway.resilience.deadline import REQUEST_DEADLINE
from unimodel.protocol.jsonbytes import dumps
from unimodel.server.routes.calls import new_call
from unimodel.server.writes import raise_on_failed_writes
from unimodel.service.chat import ChatService, PreparedChat
from unimodel.service.pipeline import Call
from unimodel.service.shape import CHAT, ApiShape

PATH = "/v1/chat/completions"

_JSON = (b"content-type", b"application/json")
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no")]


class ApiEndpoint:
    """The ASGI app of one shape's route; the chat service is the app's (``app.state.chat``), read per request so
    a test may swap it."""

    def __init__(self, shape: ApiShape = CHAT) -> None:
        self.shape = shape

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        service: ChatService = scope["app"].state.chat
        task = asyncio.current_task()
        assert task is not None
        watcher = _DisconnectWatcher(receive, task)
        call = new_call(scope, _Body(receive, watcher))
        call.shape = self.shape
        try:
            await _answer(service, call, send, watcher)
        except asyncio.CancelledError:
            if not watcher.fired:
                raise
            uncancel = getattr(task, "uncancel", None)  # Python 3.11+: the cancellation was ours, not the server's
            if uncancel is not None:
                uncancel()
        finally:
            watcher.stop()


async def _answer(service: ChatService, call: Call, send: Send, watcher: "_DisconnectWatcher") -> None:
    try:
        prepared = await service.prepare(call)
    except UnimodelError as exc:  # refusals carry the stages' headers too (rate-limit state, the route)
        watcher.stop()
        await _send_error(send, exc, call)
        return
    if call.shape.detaches(call):  # admitted, answered now, run to its end by the shape (Responses' background)
        watcher.stop()  # the client may leave at once: the request is no longer its connection's
        try:
            answer = await call.shape.detach(service, prepared)
        except UnimodelError as exc:  # refused after all (e.g. the store is down): the shape ended the request
            await _send_error(send, exc, call)
            return
        await _send_body(send, 200, dumps(answer), call.response_headers)
        return
    watcher.start()  # already watching once the body was read; a pipeline that never read it starts it here
    try:
        assert call.client_request is not None
        if call.client_request.stream:
            await _send_stream(service, prepared, send, call.response_headers, watcher)
            return
        try:
            body = dumps(await service.complete(prepared))
        except UnimodelError as exc:
            watcher.stop()
            await _send_error(send, exc, call)
            return
        watcher.stop()
        await _send_body(send, 200, body, call.response_headers)
    finally:
        await service.abandon(prepared)  # a no-op unless the request never got to run (its client left)


async def _send_stream(service: ChatService, prepared: PreparedChat, send: Send, headers: dict[str, str],
                       watcher: "_DisconnectWatcher") -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [*_SSE, *_encode_headers(headers)]})
    deadline = prepared.call.get(REQUEST_DEADLINE)  # the request's total timeout covers its writes too
    if deadline is None:
        raise_on_failed_writes()
    else:
        raise_on_failed_writes(deadline.at, deadline.error)
    async with aclosing(service.stream(prepared)) as writes:  # closed at once if a write fails
        async for data in writes:
            last = prepared.ended  # the service's last write: it ends the body too (one write, not two)
            if last:
                watcher.stop()  # the answer is complete: what the server says next is not the client leaving
            try:
                await send({"type": "http.response.body", "body": data, "more_body": not last})
            except UnimodelError as exc:  # the client stopped reading, or the time ran out while it did not
                watcher.stop()  # the connection is being dropped: that is no client leaving on its own
                if not last:
                    await writes.athrow(exc)  # the request ends as that error: engine closed, stages released
                return


async def _send_error(send: Send, exc: UnimodelError, call: Call) -> None:
    await _send_body(send, exc.status_code, dumps(call.shape.error_body(exc)), {**call.response_headers,
                                                                                **exc.headers()})


async def _send_body(send: Send, status: int, body: bytes, headers: dict[str, str]) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [_JSON, (b"content-length", str(len(body)).encode()), *_encode_headers(headers)]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _encode_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]


class _Body:
    """``call.read_body``: reads the body from ``receive`` the first time it is called (the parse stage), then
    hands the receive channel to the disconnect watcher; later calls return the same bytes. A failure to read
    it (over the size limit: the middleware's 413; the client gone: a 499) is raised by every call, so the
    request is refused, and observed, like any other."""

    __slots__ = ("_receive", "_watcher", "_body", "_failure")

    def __init__(self, receive: Receive, watcher: "_DisconnectWatcher") -> None:
        self._receive = receive
        self._watcher = watcher
        self._body: Optional[bytes] = None
        self._failure: Optional[BaseException] = None

    async def __call__(self) -> bytes:
        if self._body is not None:
            return self._body
        if self._failure is not None:
            raise self._failure
        parts: list[bytes] = []
        try:
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":  # gone before its request was read: a 499 in the log
                    raise ClientClosedError("the client closed the connection before its request was read")
                parts.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
        except BaseException as exc:  # the channel is mid-body now: never read it again
            self._failure = exc if isinstance(exc, UnimodelError) else ClientClosedError(
                "the request's body could not be read")
            raise
        self._body = b"".join(parts)
        self._watcher.start()
        return self._body


class _DisconnectWatcher:
    """A task that waits for ``http.disconnect`` and then cancels the request's task, once. :meth:`start` begins
    the watch (once the body is read: the receive channel is then the watcher's alone); :meth:`stop`
    (idempotent, synchronous) ends it, after which it can start and cancel nothing."""

    __slots__ = ("_receive", "_task", "_watch", "fired", "_stopped")

    def __init__(self, receive: Receive, task: "asyncio.Task[Any]") -> None:
        self._receive = receive
        self._task = task
        self.fired = False
        self._stopped = False
        self._watch: Optional[asyncio.Task[None]] = None

    def start(self) -> None:
        if self._watch is None and not self._stopped:
            self._watch = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while not self._stopped:
            try:
                message: Message = await self._receive()
            except Exception:  # a receive that fails has no disconnect to tell
                return
            if message["type"] == "http.disconnect":
                if not self._stopped:
                    self.fired = True
                    self._task.cancel()
                return

    def stop(self) -> None:
        self._stopped = True
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

