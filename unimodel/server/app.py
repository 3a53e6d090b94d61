"""ASGI app factory: ``create_app(settings, engine)``. The engine's lifecycle follows the app's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from unimodel.config import Settings
from unimodel.engines.base import Engine
from unimodel.server import errors
from unimodel.server.middleware import BodySizeLimitMiddleware, RequestIdMiddleware
from unimodel.server.routes import chat, meta
from unimodel.service.chat import ChatService


def create_app(settings: Settings, engine: Engine) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield
        finally:
            await engine.aclose()

    app = FastAPI(title="unimodel", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.engine = engine
    app.state.chat = ChatService(engine, settings.reasoning_for)
    errors.install(app)
    app.include_router(chat.router)
    app.include_router(meta.router)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestIdMiddleware)
    return app
