"""ASGI app factory: the composition (``unimodel/compose.py``) served over HTTP.

``create_app(settings, engine)`` composes the server from its settings and wires the result into FastAPI:
routes, middleware, error handlers, and a lifespan that starts and closes the engine set, the stages' own
resources, the request log and the alerts. Nothing here turns a setting into an object.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Optional

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from unimodel.compose import Composition, compose
from unimodel.config import Settings
from unimodel.engines.base import Engine
from unimodel.printable import mask_urls_in, printable
from unimodel.server import errors
from unimodel.server.access import StateAccess
from unimodel.server.drain import Drain
from unimodel.server.middleware import (
    CORS_EXPOSED_HEADERS,
    CORS_REQUEST_HEADERS,
    AllowedHostsMiddleware,
    BodySizeLimitMiddleware,
    CrossOriginMiddleware,
    RequestIdMiddleware,
    SingleAuthorizationMiddleware,
)
from unimodel.server.reload import KeyReload
from unimodel.server.routes import chat, meta, tokens
from unimodel.server.routes import dashboard as dashboard_route
from unimodel.server.routes import metrics as metrics_route
from unimodel.server.routes import pool as pool_route
from unimodel.server.routes import responses as responses_route
from unimodel.service.chat import ChatService
from unimodel.service.observer import Observer, Observers
from unimodel.service.pipeline import Pipeline
from unimodel.service.shape import CHAT
from unimodel.service.tokens import TokenService
from unimodel.shapes.completions import COMPLETIONS
from unimodel.shapes.messages import MESSAGES
from unimodel.shapes.responses import shape as responses_shape
from unimodel.shapes.responses.stored import StoredResponses
from unimodel.telemetry.metrics_gauges import ServingCollector

log = logging.getLogger("unimodel.server")


def create_app(settings: Settings, engine: Optional[Engine] = None,
               on_start_failure: Optional[Callable[[BaseException], None]] = None,
               observers: Sequence[Observer] = ()) -> FastAPI:
    """The app for ``settings``; ``engine`` replaces the primary engine the settings name (tests), and
    ``observers`` are told of every request besides the composed ones."""
    return serve_composition(compose(settings, engine), on_start_failure, observers)


def serve_composition(parts: Composition, on_start_failure: Optional[Callable[[BaseException], None]] = None,
                      observers: Sequence[Observer] = ()) -> FastAPI:
    """The app over a composition. The primary engine starts in the background so ``/health`` answers and
    ``/ready`` says 503 while a model loads; a start failure is logged, kept for ``/ready``, and handed to
    ``on_start_failure`` (the CLI shuts the server down with the error). The extra upstreams and the stages'
    resources start before the server listens (fast; a failure is fatal)."""
    engines, request_log, alerts = parts.engines, parts.request_log, parts.alerts
    engine = engines.primary

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        def started(task: asyncio.Task[None]) -> None:
            if task.cancelled() or task.exception() is None:
                return
            exc = task.exception()
            assert exc is not None
            app.state.start_error = exc
            log.error("the %s engine failed to start: %s", engine.kind, printable(mask_urls_in(str(exc))))
            if on_start_failure is not None:
                on_start_failure(exc)

        await engines.start_extras()
        await pipeline.start()  # stages' own resources (Redis clients, stores)
        if request_log is not None:
            await request_log.start()  # its writer thread; a database that is down does not stop the server
        if parts.responses is not None:
            await parts.responses.start()  # stored responses (Responses API): connects nothing that is down
        if alerts is not None:
            await alerts.start()  # the evaluator task and the webhook sender
        start = asyncio.create_task(engine.start(), name="engine-start")
        start.add_done_callback(started)
        app.state.drain.install()  # SIGTERM drains first (/ready 503), where the CLI's runner armed it
        if key_reload is not None:
            await key_reload.start()  # the keys read again when their files change, and on SIGHUP (if armed)
        try:
            yield
        finally:
            try:
                if key_reload is not None:
                    await key_reload.aclose()
                if parts.responses is not None:  # first: its background runs end while engines and stages work
                    await parts.responses.aclose()
                if not start.done():
                    start.cancel()
                await asyncio.gather(start, return_exceptions=True)
                await engines.aclose()
                await pipeline.aclose()
            finally:
                if alerts is not None:
                    await alerts.aclose()
                if request_log is not None:
                    await request_log.aclose()  # last: writes (or spills) the rows of the requests that ended

    # no /openapi.json (nor docs): it would describe the server to anyone who can reach it, key or not, and the
    # API it serves is OpenAI's, documented there and in the README
    app = FastAPI(title="unimodel", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.state.engines = engines
    app.state.start_error = None
    app.state.drain = Drain()  # /ready's 503 on SIGTERM (server/drain.py)
    app.state.request_log = request_log
    app.state.responses = parts.responses  # the Responses API's stored responses and sealing key
    app.state.metrics = parts.metrics
    app.state.metrics_access = metrics_route.MetricsAccess(
        tuple(k for k in (parts.metrics_key, parts.admin_key) if k), api_keys=parts.auth.ring.enabled)
    if parts.auth.ring.plain_names:
        log.info("the --api-key keys are named %s, in their order", ", ".join(parts.auth.ring.plain_names))
    if parts.metrics is not None and parts.auth.ring.enabled and not app.state.metrics_access.keys:
        log.warning("/metrics is closed: the server has API keys but no --metrics-key (or --admin-key) for the "
                    "scraper; set one, or --no-metrics")
    pipeline = Pipeline(parts.stages)
    chat_service = ChatService(engine, pipeline, Observers([*parts.observers, *observers]),
                               capture_text_chars=parts.capture_text_chars, estimator=parts.usage_estimator)
    app.state.chat = chat_service
    if parts.metrics is not None:
        parts.metrics.watch(ServingCollector(in_flight=lambda: chat_service.in_flight, engine=engine,
                                             stages=parts.stages, request_log=request_log))
    auth = parts.auth
    app.state.models_pipeline = Pipeline([auth])
    app.state.state_access = StateAccess(auth.ring, parts.admin_key)  # who sees /ready's details
    # keys changed without a restart (server/reload.py): the ring above is the one the reload swaps keys into
    key_reload = None if parts.key_source is None else KeyReload(
        auth.ring, parts.key_source,
        on_names=parts.metrics.observer.bounds.add_keys if parts.metrics is not None else None)
    app.state.key_reload = key_reload
    errors.install(app)
    app.router.add_route(chat.PATH, chat.ApiEndpoint(CHAT), methods=["POST"], include_in_schema=False)
    # Anthropic's Messages API (the query string, such as Claude Code's ?beta=true, plays no part in routing)
    app.router.add_route("/v1/messages", chat.ApiEndpoint(MESSAGES), methods=["POST"], include_in_schema=False)
    # OpenAI's Responses API: its stored responses, sealed reasoning and background runs (parts.responses), and
    # GET/DELETE /v1/responses/{id}, its cancel and input items behind the auth stage
    state = parts.responses
    app.router.add_route(responses_shape.PATH, chat.ApiEndpoint(
        responses_shape.ResponsesShape(state.store, state.sealer, state.background) if state is not None
        else responses_shape.ResponsesShape()), methods=["POST"], include_in_schema=False)
    app.state.responses_api = StoredResponses(state.store if state is not None else None,
                                              state.background if state is not None else None)
    app.state.responses_pipeline = Pipeline([auth])
    app.include_router(responses_route.router)
    # the legacy text completions: a raw prompt through the same pipeline as chat
    app.router.add_route("/v1/completions", chat.ApiEndpoint(COMPLETIONS), methods=["POST"], include_in_schema=False)
    # /tokenize, /detokenize, /v1/messages/count_tokens: the counting stages (the chat pipeline's own, to validate)
    app.state.tokens = TokenService(engine, Pipeline(parts.counting_stages), parts.usage_estimator)
    for path, endpoint in tokens.endpoints(lambda: next((card.id for card in engine.models()), None)):
        app.router.add_route(path, endpoint, methods=["POST"], include_in_schema=False)
    app.include_router(meta.router)
    app.include_router(pool_route.router)  # the upstream pool's admin API (404 without a pool)
    if parts.metrics is not None:
        app.include_router(metrics_route.router)
    app.state.window, app.state.alerts = parts.window, alerts
    if parts.dashboard:  # the same keys as the API (its auth stage's ring), or only --admin-key
        app.state.dashboard = dashboard_route.Dashboard(parts.window, alerts, auth.ring, parts.admin_key,
                                                        dashboard_route.load_page())
        app.include_router(dashboard_route.router)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=parts.max_request_bytes)
    app.add_middleware(SingleAuthorizationMiddleware)  # every route: one Authorization header or a 400
    if parts.cors_origins:  # the pages of these origins may call the API: their preflights answered, CORS headers
        app.add_middleware(CORSMiddleware, allow_origins=list(parts.cors_origins), allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=list(CORS_REQUEST_HEADERS), expose_headers=list(CORS_EXPOSED_HEADERS),
                           allow_private_network=True)
    app.add_middleware(CrossOriginMiddleware, allowed_origins=parts.cors_origins)  # any other page's: 403
    app.add_middleware(RequestIdMiddleware)
    if parts.allowed_hosts is not None:  # before anything else: a Host not listed (DNS rebinding) is a 421
        app.add_middleware(AllowedHostsMiddleware, hosts=parts.allowed_hosts)
        log.info("answering requests for the host names %s only (--allowed-hosts adds more)",
                 ", ".join(parts.allowed_hosts))
    return app
