"""``GET /metrics``: the app's Prometheus registry (``telemetry/metrics.py``).

It holds counts and names from the configuration (routes, upstreams, models, key names), never a prompt, a key
or a user; still, it is for the operator, not for whoever reaches the port. Who may scrape
(:class:`MetricsAccess`):

* with ``--metrics-key`` or ``--admin-key``: a request with ``Authorization: Bearer`` and one of them (compared
  in constant time); Prometheus sends it with ``authorization: {credentials_file: …}`` in its scrape config;
* else, with API keys (plain or named): nobody (403 saying to set ``--metrics-key``): the API has keys, so its
  traffic figures are not for anonymous eyes, and an API key does not open it (a client is not an operator);
* else (no key at all): a client on a loopback address only (a Prometheus or agent on the same host). A
  local reverse proxy that sets ``X-Forwarded-For`` (trusted from loopback by uvicorn) shows its client's
  address instead, so a proxied scrape from elsewhere is refused too. Anything else needs ``--metrics-key``.

Absent (404) with ``--no-metrics``. Why not open as before: the API keys did not cover it, so a server with
keys published its per-key traffic, route and upstream names to anyone who could reach it.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from typing import Optional

from fastapi import APIRouter, Request
from fastapi.responses import Response

from unimodel.errors import AuthenticationError, PermissionDeniedError, UnimodelError
from unimodel.server.errors import error_response
from unimodel.telemetry.metrics import Metrics

router = APIRouter()


@dataclass(frozen=True)
class MetricsAccess:
    """Who may scrape: ``keys`` (``--metrics-key`` and ``--admin-key``, those set), ``api_keys`` (whether the
    API has keys). See the module's docstring for the rules."""

    keys: tuple[str, ...] = ()
    api_keys: bool = False

    def refusal(self, authorization: Optional[str], client: Optional[tuple[str, int]]) -> Optional[UnimodelError]:
        """``None`` when this request may scrape, else the error to answer with."""
        if self.keys:
            scheme, _, token = (authorization or "").partition(" ")
            given = token.strip().encode("utf-8", "surrogatepass")
            match = False
            for key in self.keys:  # every key compared: the timing says nothing about which one matched
                match |= hmac.compare_digest(given, key.encode("utf-8", "surrogatepass"))
            if scheme.lower() == "bearer" and given and match:
                return None
            return AuthenticationError("/metrics needs 'Authorization: Bearer KEY' with the --metrics-key (or the "
                                       "--admin-key).")
        if self.api_keys:
            return PermissionDeniedError("/metrics is closed: the server has API keys but no --metrics-key; set "
                                         "--metrics-key KEY (or --admin-key) and give it to the scraper.")
        if not _loopback(client):
            return PermissionDeniedError("/metrics answers loopback clients only while no key is configured; set "
                                         "--metrics-key KEY to scrape from elsewhere.")
        return None


def _loopback(client: Optional[tuple[str, int]]) -> bool:
    if not client:
        return False
    try:
        address = ipaddress.ip_address(client[0])
    except ValueError:  # a Unix socket's peer, or a name: not an address we can vouch for
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    served: Metrics = request.app.state.metrics
    access: MetricsAccess = request.app.state.metrics_access
    refused = access.refusal(request.headers.get("authorization"), request.scope.get("client"))
    if refused is not None:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(refused, AuthenticationError) else None
        return error_response(refused, headers)
    body, content_type = served.render(request.headers.get("accept", ""))
    return Response(body, media_type=content_type)
