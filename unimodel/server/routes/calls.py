"""The pipeline's view of an HTTP request, made one way for every route: :func:`new_call`, and
:func:`authenticated` for the routes that run only the auth stage (``/v1/models``, the stored responses)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.types import Scope

from unimodel.service.context import RequestContext, client_request_id_from, new_request_id
from unimodel.service.pipeline import Call, Pipeline


def new_call(scope: Scope, read_body: Callable[[], Awaitable[bytes]]) -> Call:
    """A request's headers (lower-case names), the ids ``RequestIdMiddleware`` set (ours, and the client's apart),
    and its body, read only when a stage asks. A repeated header keeps its last value here; a second
    ``Authorization`` never gets this far (the app's ``SingleAuthorizationMiddleware`` refuses it, for every route
    alike)."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    state = scope.get("state", {})
    rid = state.get("request_id") or new_request_id()
    client_rid = state.get("client_request_id") if "request_id" in state else client_request_id_from(
        headers.get("x-request-id"))
    return Call(RequestContext(rid, client_rid), headers, read_body)


async def authenticated(request: Request, pipeline: Pipeline) -> Call:
    """The request run through ``pipeline`` (the auth stage alone): its call, with the caller known; a missing or
    wrong key raises as it would on the API."""
    call = new_call(request.scope, request.body)
    entered = await pipeline.enter(call)
    await pipeline.exit(call, entered, None)
    return call
