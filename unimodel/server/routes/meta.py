"""``GET /v1/models``, ``/health`` (process alive) and ``/ready`` (some engine can serve, not draining)."""

from __future__ import annotations

import logging
from typing import Any, Optional

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from unimodel.engines.base import Engine, StartProgress
from unimodel.engines.engine_set import EngineSet
from unimodel.protocol.openai import ModelList
from unimodel.server.access import StateAccess
from unimodel.server.drain import Drain
from unimodel.server.routes.calls import authenticated

router = APIRouter()
log = logging.getLogger("unimodel.server")


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    await authenticated(request, request.app.state.models_pipeline)  # the same auth stage as chat requests
    return JSONResponse(ModelList(data=request.app.state.engine.models()).model_dump(mode="json"))


@router.get("/health")
async def health() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """200 ``ready`` (every engine of the set can serve) or ``degraded`` (some can: the others' requests go to
    them; or a stage's dependency is down, such as Redis: the requests are still served, without what it gave),
    503 ``not ready`` (none can, or the server is draining after SIGTERM). A load balancer needs only the
    status; the details (what is down and why, the engine, the models, what a model load is doing, the stages'
    status) are for the operator's keys (:mod:`unimodel.server.access`). While the primary engine starts (a
    model loading, vLLM starting) the 503 says so to everyone, with the phase: nothing secret, and what a user
    who just started the server wants to know.

    Redis down is ``degraded``, never 503: every replica shares the one Redis, so a 503 would take them all out
    of the load balancer at once, and each still serves (rate limits fail open or closed as
    ``--limits-on-redis-failure`` says; requests run without idempotency)."""
    app = request.app
    engines: EngineSet = app.state.engines
    drain: Drain = app.state.drain
    primary = engines.primary
    down = [name for name, engine in (("primary", primary), *engines.extras.items()) if not _serves(engine)]
    failed: Optional[BaseException] = app.state.start_error
    pipeline = app.state.chat.pipeline
    problems = await pipeline.check()  # bounded: a cached PING of Redis at most every few seconds
    loading = _start_progress(primary) if "primary" in down and failed is None else None
    headers = {"Cache-Control": "no-store"}
    if drain.draining:
        status, why = "not ready", "the server is shutting down"
    elif not down and not problems:
        status, why = "ready", None
    elif len(down) < 1 + len(engines.extras):  # another engine of the set serves the primary's requests
        status, why = "degraded", None
    else:
        status, why = "not ready", f"the {primary.kind} engine is not ready"
        if loading is not None:
            why = loading.reason()
        if failed is None:
            headers["Retry-After"] = "2"
    if "primary" in down and failed is not None and not drain.draining:  # its text (paths …): the log only
        why = f"the {primary.kind} engine failed to start ({type(failed).__name__}); see the server log"
    code = 503 if status == "not ready" else 200
    access: StateAccess = app.state.state_access
    if not await access.allows(request):
        public: dict[str, Any] = {"status": status}
        if loading is not None and code == 503 and not drain.draining:
            public["reason"] = why
        return JSONResponse(public, status_code=code, headers=headers)
    body: dict[str, Any] = {"status": status, "engine": primary.kind}
    if why is not None:
        body["reason"] = why
    if loading is not None:
        body["loading"] = loading.as_dict()  # phase, elapsed_s, and done/total where the phase counts shards
    if down:
        body["down"] = down  # the engine set's names: primary, fallback-N, canary, the config file's upstreams
    if problems:
        body["degraded"] = problems  # what a stage can no longer do (Redis down …), one sentence each
    if "primary" not in down:
        body["models"] = [m.id for m in primary.models()]
    pool = primary.pool_status()
    if pool is not None:  # an upstream pool: its replicas, their load and its queue
        body["pool"] = pool
    return JSONResponse({**body, **pipeline.status()}, status_code=code, headers=headers)


def _start_progress(engine: Engine) -> Optional[StartProgress]:
    try:
        return engine.start_progress()
    except Exception:  # what a start is doing is a detail: /ready answers without it
        log.exception("the %s engine's start_progress failed", engine.kind)
        return None


def _serves(engine: Engine) -> bool:
    try:
        return bool(engine.is_ready())
    except Exception:  # an engine that cannot say is not one to send requests to
        log.exception("the %s engine's is_ready failed", engine.kind)
        return False
