"""``GET /metrics``: the app's Prometheus registry (``telemetry/metrics.py``).

Open by default, as Prometheus scrapes without credentials (it holds counts and names from the configuration,
never a prompt, a key or a user); with ``--metrics-key`` it requires ``Authorization: Bearer KEY`` (compared in
constant time), which Prometheus sends with ``authorization: {credentials: KEY}`` in its scrape config. The
client keys do not open it: a client of the API is not an operator. Absent (404) with ``--no-metrics``.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response

from unimodel.errors import AuthenticationError
from unimodel.server.errors import error_response
from unimodel.telemetry.metrics import Metrics

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    served: Metrics = request.app.state.metrics
    key: "str | None" = request.app.state.metrics_key
    if key is not None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        expected = key.encode("utf-8", "surrogatepass")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("utf-8", "surrogatepass"),
                                                                  expected):
            return error_response(AuthenticationError("/metrics needs 'Authorization: Bearer KEY' with the "
                                                      "--metrics-key."), {"WWW-Authenticate": "Bearer"})
    body, content_type = served.render(request.headers.get("accept", ""))
    return Response(body, media_type=content_type)
