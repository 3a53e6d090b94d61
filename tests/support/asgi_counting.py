"""An outermost ASGI wrapper that counts the body bytes the app read of each request (through ``receive``)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class CountsBodyBytes:
    """Outermost: the body bytes the app read (through ``receive``), per request, once it is answered."""

    def __init__(self, app: ASGIApp, counts: list[int]) -> None:
        self.app, self.counts = app, counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        read = 0

        async def counting() -> Message:
            nonlocal read
            message = await receive()
            read += len(message.get("body", b""))
            return message

        try:
            await self.app(scope, counting, send)
        finally:
            self.counts.append(read)
