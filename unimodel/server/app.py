"""ASGI app factory: ``create_app(settings, engine)``. The engine's lifecycle follows the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Optional

from fastapi import FastAPI

from unimodel.config import Settings
from unimodel.engines.base import Engine
from unimodel.gateway.auth import ApiKeyAuth
from unimodel.gateway.images import ImagePolicy, ImagePolicyStage
from unimodel.server import errors
from unimodel.server.middleware import BodySizeLimitMiddleware, RequestIdMiddleware
from unimodel.server.routes import chat, meta
from unimodel.service.chat import ChatService
from unimodel.service.observer import AccessLog, Observer, Observers
from unimodel.service.parse import ParseStage
from unimodel.service.pipeline import Pipeline, Stage
from unimodel.service.validate import ValidateStage

log = logging.getLogger("unimodel.server")


def build_stages(settings: Settings, engine: Engine) -> list[Stage]:
    """The chat pipeline's stages, in the order of the architecture page: auth → parse → route → validate →
    images → limits → idempotency → resilience (route, limits, idempotency and resilience as they land)."""
    return [
        ApiKeyAuth(settings.api_keys),
        ParseStage(settings.max_json_depth),
        ValidateStage(engine.models, settings.reasoning_for, settings.default_max_tokens,
                      unknown_fields=settings.unknown_fields, upstream_extra_fields=settings.upstream_extra_fields),
        ImagePolicyStage(image_policy(settings)),
    ]


def image_policy(settings: Settings) -> ImagePolicy:
    return ImagePolicy(allow_urls=settings.allow_image_urls, limits=settings.image_limits,
                       fetch_timeout_s=settings.image_fetch_timeout_s)


def create_app(settings: Settings, engine: Engine,
               on_start_failure: Optional[Callable[[BaseException], None]] = None,
               observers: Sequence[Observer] = ()) -> FastAPI:
    """The app; the engine starts in the background so ``/health`` answers and ``/ready`` says 503 while a
    model loads. A start failure is logged, kept for ``/ready``, and handed to ``on_start_failure`` (the CLI
    shuts the server down with the error)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        def started(task: asyncio.Task[None]) -> None:
            if task.cancelled() or task.exception() is None:
                return
            exc = task.exception()
            assert exc is not None
            app.state.start_error = exc
            log.error("the %s engine failed to start: %s", engine.kind, exc)
            if on_start_failure is not None:
                on_start_failure(exc)

        pipeline: Pipeline = app.state.chat.pipeline
        await pipeline.start()  # stages' own resources (clients, extra engines): fast, and a failure is fatal
        start = asyncio.create_task(engine.start(), name="engine-start")
        start.add_done_callback(started)
        try:
            yield
        finally:
            if not start.done():
                start.cancel()
            await asyncio.gather(start, return_exceptions=True)
            await engine.aclose()
            await pipeline.aclose()

    app = FastAPI(title="unimodel", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.engine = engine
    app.state.start_error = None
    stages = build_stages(settings, engine)
    app.state.chat = ChatService(engine, Pipeline(stages), Observers([AccessLog(), *observers]))
    app.state.models_pipeline = Pipeline([s for s in stages if isinstance(s, ApiKeyAuth)])
    errors.install(app)
    app.include_router(chat.router)
    app.include_router(meta.router)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestIdMiddleware)
    return app
