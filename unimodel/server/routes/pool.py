"""The upstream pool's admin API: ``GET /admin/pool`` (replicas, their load and state, the gateway's queue, why
requests went where they went), ``POST /admin/pool/replicas/{replica}/drain`` (no new requests to it; the ones
in flight finish) and ``/undrain`` (back in service). A replica is named as the pool names it: ``host:port``.

Reading takes what ``/ready``'s details take (:mod:`unimodel.server.access`). Draining changes where every
tenant's requests go, so it takes the operator's ``--admin-key``; only a server with no key of any kind (a
laptop) lets anyone drain, as it lets anyone use it. Without a pool (one upstream, a local model) these
routes answer 404.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from unimodel.errors import AuthenticationError, NotFoundError, PermissionDeniedError
from unimodel.server.access import StateAccess, bearer

router = APIRouter()
log = logging.getLogger("unimodel.server")

MAX_NAME_CHARS = 300


@router.get("/admin/pool")
async def pool_status(request: Request) -> JSONResponse:
    access: StateAccess = request.app.state.state_access
    if not await access.allows(request):
        raise AuthenticationError("reading the pool's state takes the admin key (or an API key without one)")
    return JSONResponse(_status(request), headers={"Cache-Control": "no-store"})


@router.post("/admin/pool/replicas/{replica:path}/drain")
async def drain(request: Request, replica: str) -> JSONResponse:
    return _set_drained(request, replica, True)


@router.post("/admin/pool/replicas/{replica:path}/undrain")
async def undrain(request: Request, replica: str) -> JSONResponse:
    return _set_drained(request, replica, False)


def _status(request: Request) -> dict[str, Any]:
    status = request.app.state.engine.pool_status()
    if status is None:
        raise NotFoundError("this server has no upstream pool (give --upstream more than once, or a dns://, "
                            "dns+srv:// or k8s:// upstream)")
    return status


def _set_drained(request: Request, name: str, drained: bool) -> JSONResponse:
    access: StateAccess = request.app.state.state_access
    if access.admin_key is not None:
        presented = bearer(request) or ""
        if not hmac.compare_digest(presented.encode("utf-8", "surrogatepass"),
                                   access.admin_key.encode("utf-8", "surrogatepass")):
            raise AuthenticationError("draining a replica takes the admin key (Authorization: Bearer ADMIN_KEY)")
    elif access.protected:
        raise PermissionDeniedError("draining a replica takes the admin key: start the server with "
                                    "--admin-key-file (API keys may not drain replicas)")
    _status(request)  # 404 without a pool
    if len(name) > MAX_NAME_CHARS:
        raise NotFoundError("no replica of the pool has that name")
    try:
        replica = request.app.state.engine.drain(name, drained)
    except KeyError:
        raise NotFoundError(f"no replica of the pool is called {name!r} (GET /admin/pool lists them)") from None
    log.warning("admin: replica %s %s", name, "drained" if drained else "back in service")
    return JSONResponse({"replica": replica.name, "state": replica.state, "inflight": replica.inflight})
