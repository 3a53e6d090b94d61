"""``GET /dashboard`` (one self-contained page) and ``GET /dashboard/data`` (its JSON, from the rolling window).

Who may look: with ``--admin-key`` set, only that key; otherwise any API key the server accepts (plain or
named); with no key configured at all, anyone who can reach the server, like the API itself. The data route
takes the key as ``Authorization: Bearer KEY``. A browser cannot send that header when it opens a page, so the
page takes it once as ``/dashboard?key=KEY`` (or shows a small form that sends it so): the page's script reads
it, removes it from the address bar and the history entry, and keeps it in memory for its data requests; the
server never writes it into the page. Both answers are ``no-store``; the page is sent with a strict Content
Security Policy whose only script and style are the page's own, allowed by a fresh nonce per response, and no
request may leave for another origin.
"""

from __future__ import annotations

import hmac
import math
import secrets
from dataclasses import dataclass
from importlib import resources
from typing import Optional

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from unimodel.errors import AuthenticationError, InvalidRequestError
from unimodel.gateway.keys import MISSING, WRONG, KeyRing
from unimodel.server.errors import error_response
from unimodel.telemetry.alerts import Alerts
from unimodel.telemetry.dashboard_data import dashboard_data
from unimodel.telemetry.window import RequestWindow

router = APIRouter()

NONCE = "{{NONCE}}"
DEFAULT_WINDOW_S = 900.0
MAX_WINDOW_S = 86_400.0
_LOGIN = """<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="referrer" content="no-referrer">
<title>unimodel dashboard</title><link rel="icon" href="data:,"></head><body>
<form method="get" action="/dashboard"><p>This dashboard needs a key.</p>
<label>Key <input type="password" name="key" autocomplete="off" autofocus></label> <button>Open</button></form>
</body></html>"""


def load_page() -> str:
    """The page's HTML, shipped in the package (read once, when the app is made)."""
    return (resources.files("unimodel.server") / "static" / "dashboard.html").read_text(encoding="utf-8")


@dataclass
class Dashboard:
    window: RequestWindow
    alerts: Optional[Alerts]
    ring: KeyRing
    admin_key: Optional[str] = None
    page: str = ""

    @property
    def protected(self) -> bool:
        return self.admin_key is not None or self.ring.enabled

    async def authorize(self, presented: Optional[str]) -> None:
        """Returns when ``presented`` may see the dashboard; :class:`AuthenticationError` otherwise."""
        if not self.protected:
            return
        if not presented:
            raise AuthenticationError(MISSING)
        if self.admin_key is not None:
            if not hmac.compare_digest(presented.encode("utf-8", "surrogatepass"),
                                       self.admin_key.encode("utf-8", "surrogatepass")):
                raise AuthenticationError(WRONG)
            return
        await self.ring.caller(presented)


def _bearer(request: Request) -> Optional[str]:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _page_headers(nonce: str) -> dict[str, str]:
    policy = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src data:; "
              "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
    return {"Content-Security-Policy": policy, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}


@router.get("/dashboard", include_in_schema=False)
async def page(request: Request) -> Response:
    dashboard: Dashboard = request.app.state.dashboard
    nonce = secrets.token_urlsafe(18)
    try:
        await dashboard.authorize(request.query_params.get("key") or _bearer(request))
    except AuthenticationError:
        return HTMLResponse(_LOGIN, status_code=401, headers={**_page_headers(nonce), "WWW-Authenticate": "Bearer"})
    return HTMLResponse(dashboard.page.replace(NONCE, nonce), headers=_page_headers(nonce))


@router.get("/dashboard/data", include_in_schema=False)
async def data(request: Request) -> JSONResponse:
    dashboard: Dashboard = request.app.state.dashboard
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
    try:
        await dashboard.authorize(_bearer(request))
    except AuthenticationError as exc:
        return error_response(exc, headers={**headers, "WWW-Authenticate": "Bearer"})
    try:
        window_s = float(request.query_params.get("window_s", DEFAULT_WINDOW_S))
    except ValueError:
        window_s = math.nan
    if not 0 < window_s <= MAX_WINDOW_S:  # NaN fails too
        return error_response(InvalidRequestError(f"window_s must be a number of seconds, 1 to {MAX_WINDOW_S:.0f}",
                                                  param="window_s"), headers=headers)
    return JSONResponse(dashboard_data(dashboard.window, dashboard.alerts, window_s), headers=headers)
