"""``GET /v1/models``, ``/health`` (process alive) and ``/ready`` (engine ready)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from unimodel.errors import ServiceUnavailableError
from unimodel.protocol.openai import ModelList
from unimodel.server.errors import error_response
from unimodel.service.context import RequestContext
from unimodel.service.pipeline import Call, Pipeline

router = APIRouter()


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    pipeline: Pipeline = request.app.state.models_pipeline
    call = Call(RequestContext(request.scope.get("state", {}).get("request_id", "")), request.headers, request.body)
    entered = await pipeline.enter(call)  # the same auth stage as chat requests
    await pipeline.exit(call, entered, None)
    return JSONResponse(ModelList(data=request.app.state.engine.models()).model_dump(mode="json"))


@router.get("/health")
async def health() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    engine = request.app.state.engine
    stages = request.app.state.chat.pipeline.status()
    if engine.is_ready():
        return JSONResponse({"status": "ready", "engine": engine.kind,
                             "models": [m.id for m in engine.models()], **stages})
    failed = request.app.state.start_error
    if failed is not None:
        # the reason (paths, exception text) is in the server log, not for whoever can reach /ready
        return error_response(ServiceUnavailableError(
            f"the {engine.kind} engine failed to start ({type(failed).__name__}); see the server log"))
    return error_response(ServiceUnavailableError(f"the {engine.kind} engine is not ready", retry_after=2))
