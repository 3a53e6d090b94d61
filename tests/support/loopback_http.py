"""Small real servers on 127.0.0.1 for tests of HTTP clients (the upstream engine's aiohttp session).

* :func:`http_server` — an ``aiohttp.web`` app whose one handler answers every method and path, so a test says
  in a few lines what the upstream answers: a status, a body, headers, a stream written piece by piece, or
  nothing at all. Handlers are cancelled when the client goes away (``handler_cancellation``), so a test can
  see a client leave.
* :func:`tcp_server` — raw TCP, for answers that are not HTTP (garbage, a connection closed at once).
* :func:`closed_port` — an address where nothing listens.
* :func:`answer` and :func:`sse_body` — the common handlers and bodies.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, Optional

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Connection = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def http_server(handler: Handler) -> AsyncIterator[str]:
    """Serve ``handler`` for every request; yields the base URL (``http://127.0.0.1:PORT/v1``)."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def tcp_server(on_connection: Connection) -> AsyncIterator[str]:
    """Raw TCP: ``on_connection`` gets each connection's streams; yields the base URL as for HTTP."""
    open_writers: set[asyncio.StreamWriter] = set()

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        open_writers.add(writer)
        try:
            await on_connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away first
        finally:
            open_writers.discard(writer)
            writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()
        for writer in list(open_writers):  # connections still open end now (wait_closed waits for them)
            writer.close()
        await server.wait_closed()


async def read_request_head(reader: asyncio.StreamReader) -> bytes:
    """A request's line and headers (what a raw server reads before it misbehaves)."""
    return await reader.readuntil(b"\r\n\r\n")


def closed_port() -> str:
    """A base URL on 127.0.0.1 where nothing listens (a port just bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def answer(status: int = 200, body: bytes = b"", *, json_body: Any = None,
           headers: Optional[Mapping[str, str]] = None) -> Handler:
    """A handler that always gives the same answer."""
    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        if json_body is not None:
            return web.json_response(json_body, status=status, headers=headers)
        return web.Response(status=status, body=body, headers=headers)

    return handle


def sse_body(*frames: Any) -> bytes:
    """``data:`` frames (JSON-encoded unless already text), each followed by a blank line."""
    return "".join(f"data: {f if isinstance(f, str) else json.dumps(f)}\n\n" for f in frames).encode()


SSE_HEADERS = {"Content-Type": "text/event-stream"}


def sse(*frames: Any) -> Handler:
    """A handler that streams ``frames`` in one SSE body."""
    return answer(200, sse_body(*frames), headers=SSE_HEADERS)
