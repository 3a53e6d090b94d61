"""ASGI app factory: ``create_app(settings, engine)``. The engine's lifecycle follows the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Optional

from fastapi import FastAPI

from unimodel.config import ConfigError, Settings
from unimodel.engines.base import Engine
from unimodel.gateway.auth import ApiKeyAuth
from unimodel.gateway.idempotency import IdempotencyStage, IdempotencyStore, MemoryStore, RedisStore
from unimodel.gateway.images import ImagePolicy, ImagePolicyStage
from unimodel.gateway.limits import limits_stages
from unimodel.gateway.resilience import build_resilience
from unimodel.gateway.routes import RouteStage
from unimodel.server import errors
from unimodel.server.middleware import BodySizeLimitMiddleware, RequestIdMiddleware
from unimodel.server.routes import chat, meta
from unimodel.server.routes import dashboard as dashboard_route
from unimodel.server.routes import metrics as metrics_route
from unimodel.service.chat import ChatService
from unimodel.service.observer import AccessLog, Observer, Observers
from unimodel.service.parse import ParseStage
from unimodel.service.pipeline import Pipeline, Stage
from unimodel.service.validate import ValidateStage
from unimodel.telemetry.alerts import Alerts
from unimodel.telemetry.metrics import metrics_for
from unimodel.telemetry.metrics_gauges import ServingCollector
from unimodel.telemetry.request_log import CAPTURE_CHARS, RequestLog, RequestLogConfig, open_request_log
from unimodel.telemetry.store import LogStoreError
from unimodel.telemetry.window import RequestWindow

log = logging.getLogger("unimodel.server")


def build_stages(settings: Settings, engine: Engine) -> list[Stage]:
    """The chat pipeline's stages, in the order of the architecture page: auth → parse → route → validate →
    images → limits → idempotency → resilience (route, limits, idempotency and resilience as they land)."""
    return [
        ApiKeyAuth(settings.api_keys, settings.keys),
        ParseStage(settings.max_json_depth),
        RouteStage(settings.route_policies, image_policy=image_policy(settings), policy_for=settings.reasoning_for),
        ValidateStage(engine.models, settings.reasoning_for, settings.default_max_tokens,
                      unknown_fields=settings.unknown_fields, upstream_extra_fields=settings.upstream_extra_fields),
        ImagePolicyStage(image_policy(settings)),
        *limits_stages(settings),  # none when no limit is configured, for the server or any key
        *idempotency_stages(settings),  # after limits, before resilience
        build_resilience(settings),  # last: wraps the engine call itself (retries, breakers, fallback, canary)
    ]


def idempotency_stages(settings: Settings) -> list[Stage]:
    """The idempotency stage (none with ``--no-idempotency``); its keys in Redis when ``--redis`` is set."""
    if not settings.idempotency:
        return []
    store: IdempotencyStore
    if settings.redis:
        store = RedisStore(settings.redis, settings.redis_prefix, settings.idempotency_ttl_s,
                           settings.idempotency_claim_ttl_s)
    else:
        store = MemoryStore(settings.idempotency_ttl_s, settings.idempotency_claim_ttl_s,
                            settings.idempotency_memory_entries, settings.idempotency_memory_bytes)
    return [IdempotencyStage(store, in_flight=settings.idempotency_in_flight, wait_s=settings.idempotency_wait_s,
                             max_bytes=settings.idempotency_max_bytes)]


def build_request_log(settings: Settings) -> Optional[RequestLog]:
    """The request log (none with ``--no-request-log``); reads or creates its secret file, connects nothing."""
    if not settings.request_log:
        return None
    secret = settings.log_secret.get_secret_value() if settings.log_secret is not None else None
    try:
        return open_request_log(RequestLogConfig(
            db=settings.log_db, data_dir=settings.data_dir, log_prompts=settings.log_prompts,
            prompt_retention_days=settings.prompt_retention_days, secret=secret,
            buffer_rows=settings.log_buffer_rows, spill_path=settings.log_spill_path))
    except LogStoreError as exc:
        raise ConfigError(str(exc)) from exc
    except OSError as exc:
        raise ConfigError(f"the request log cannot use {exc.filename}: {exc.strerror}") from exc


DASHBOARD_HORIZON_S = 3600.0  # the dashboard's longest view


def build_alerts(settings: Settings) -> tuple[RequestWindow, Optional[Alerts]]:
    """The rolling window the dashboard and the alerts read (it reaches an hour back, or as far as the longest
    rule with its baseline), and the alerts (none without rules)."""
    window = RequestWindow(max([DASHBOARD_HORIZON_S, *(rule.reach_s for rule in settings.alerts)]))
    if not settings.alerts:
        return window, None
    return window, Alerts(settings.alerts, window, default_webhook=settings.alert_webhook_url,
                          interval_s=settings.alert_eval_interval_s)


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
        if request_log is not None:
            await request_log.start()  # its writer thread; a database that is down does not stop the server
        if alerts is not None:
            await alerts.start()  # the evaluator task and the webhook sender
        start = asyncio.create_task(engine.start(), name="engine-start")
        start.add_done_callback(started)
        try:
            yield
        finally:
            try:
                if not start.done():
                    start.cancel()
                await asyncio.gather(start, return_exceptions=True)
                await engine.aclose()
                await pipeline.aclose()
            finally:
                if alerts is not None:
                    await alerts.aclose()
                if request_log is not None:
                    await request_log.aclose()  # last: writes (or spills) the rows of the requests that ended

    app = FastAPI(title="unimodel", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.engine = engine
    app.state.start_error = None
    stages = build_stages(settings, engine)
    request_log = build_request_log(settings)
    app.state.request_log = request_log
    logged: list[Observer] = [request_log] if request_log is not None else []
    metrics = metrics_for(settings, engine)  # GET /metrics: this app's own registry (none with --no-metrics)
    app.state.metrics = metrics
    measured: list[Observer] = [metrics.observer] if metrics is not None else []
    window, alerts = build_alerts(settings)  # the dashboard's and the alerts' rolling aggregate
    alerting: list[Observer] = [window, *([alerts] if alerts is not None else [])]
    app.state.chat = ChatService(engine, Pipeline(stages),
                                 Observers([AccessLog(), *logged, *measured, *alerting, *observers]),
                                 capture_text_chars=CAPTURE_CHARS if settings.log_prompts and logged else 0)
    if metrics is not None:
        chat_service = app.state.chat
        metrics.watch(ServingCollector(in_flight=lambda: chat_service.in_flight, engine=engine, stages=stages,
                                       request_log=request_log))
    app.state.models_pipeline = Pipeline([s for s in stages if isinstance(s, ApiKeyAuth)])
    errors.install(app)
    app.router.add_route(chat.PATH, chat.ChatCompletionsEndpoint(), methods=["POST"], include_in_schema=False)
    app.include_router(meta.router)
    if metrics is not None:
        app.include_router(metrics_route.router)
    app.state.window, app.state.alerts = window, alerts
    if settings.dashboard:  # the same keys as the API (its auth stage's ring), or only --admin-key
        auth = next(s for s in stages if isinstance(s, ApiKeyAuth))
        admin_key = settings.admin_key.get_secret_value() if settings.admin_key is not None else None
        app.state.dashboard = dashboard_route.Dashboard(window, alerts, auth.ring, admin_key,
                                                        dashboard_route.load_page())
        app.include_router(dashboard_route.router)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(RequestIdMiddleware)
    return app
