"""Small ASGI middleware: request ids, one ``Authorization`` header, the request body size limit, and what keeps a
web page from driving the server (the ``Host`` allowlist, cross-origin requests)."""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Collection
from typing import Optional

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from unimodel.errors import (
    CrossOriginError,
    InvalidRequestError,
    MisdirectedRequestError,
    RequestTooLargeError,
    UnimodelError,
)
from unimodel.service.context import client_request_id_from, new_request_id

log = logging.getLogger("unimodel.server")


class RequestIdMiddleware:
    """Gives every HTTP request the server's own id (``scope["state"]["request_id"]``: the completion id, the
    request log's and the log lines' id) and keeps the client's sane ``X-Request-Id`` apart, as
    ``scope["state"]["client_request_id"]``: a label any client may set to anything, another key's id included,
    so it never names a request. The response's ``X-Request-Id`` echoes the client's id when it sent one (a
    proxy or client that set it correlates by it), else carries ours."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_request_id()
        client = client_request_id_from(
            next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None))
        state = scope.setdefault("state", {})
        state["request_id"], state["client_request_id"] = rid, client
        echoed = (client or rid).encode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", echoed)]
            await send(message)

        await self.app(scope, receive, send_with_id)


class SingleAuthorizationMiddleware:
    """Refuses (400) a request that carries more than one ``Authorization`` header (or ``x-api-key``, the
    Anthropic API's key header), on every route.

    HTTP allows one (RFC 9110 §11.6.2: it is not a list), and the readers of this server disagree on which of
    two wins (Starlette's ``request.headers.get`` takes the first, a dict built from the ASGI headers the
    last), so a request with two could be judged by one key and counted against another. One rule, before
    any route: such a request is malformed. One pass over the header list, no allocation on the usual path."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            seen = keys = 0
            for name, _ in scope["headers"]:
                if name == b"authorization":
                    seen += 1
                elif name == b"x-api-key":
                    keys += 1
            if seen > 1 or keys > 1:
                header = "Authorization" if seen > 1 else "x-api-key"
                await send_error(send, InvalidRequestError(
                    f"The request has more than one {header} header; send exactly one.", param=header))
                return
        await self.app(scope, receive, send)


async def send_error(send: Send, err: UnimodelError) -> None:
    """Answers with ``err`` in the OpenAI error shape, before any app has seen the request."""
    body = json.dumps(err.to_dict()).encode()
    await send({"type": "http.response.start", "status": err.status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in err.headers().items())]})
    await send({"type": "http.response.body", "body": body})


class BodySizeLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413, by Content-Length up front or by counting as they arrive."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # the app's UnimodelError handler answers 413
                    raise RequestTooLargeError(
                        f"The request body exceeds the limit of {self.max_bytes} bytes.")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except RequestTooLargeError:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        err = RequestTooLargeError(f"The request body exceeds the limit of {self.max_bytes} bytes.")
        body = json.dumps(err.to_dict()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


# ---- browsers: a web page must not drive this server ------------------------------------------------------------
# Written by hand, not with Starlette's TrustedHostMiddleware: that one answers a plain-text 400, and every refusal
# here is in the OpenAI error shape; the Origin rule has no library equivalent (CORSMiddleware only adds headers,
# it refuses nothing but preflights, and only when it is installed).

_MAX_REMEMBERED_HOSTS = 32


def host_name(raw: bytes) -> str:
    """The name of a ``Host`` header as :func:`unimodel.config_values.host_pattern` writes allowed ones: lower case, no
    port, no trailing dot, an IPv6 address in brackets in its short form; ``""`` for what is no host."""
    text = raw.decode("latin-1").strip().lower()
    if text.startswith("["):
        address, sep, _ = text[1:].partition("]")
        try:
            return f"[{ipaddress.IPv6Address(address)}]" if sep else ""
        except ValueError:
            return ""
    name, _, port = text.partition(":")
    return "" if ":" in port else name.rstrip(".")


class AllowedHostsMiddleware:
    """Refuses (421, ``host_not_allowed``) a request whose ``Host`` is not a name this server answers to.

    A page on ``evil.example`` whose name its owner re-points at 127.0.0.1 (DNS rebinding) is, to the browser, on
    the same origin as this server: it may send anything and read every answer. What gives it away is the
    ``Host`` its requests carry, ``evil.example``. ``hosts`` are exact names and ``*.example.com`` patterns
    (any subdomain); the port is not compared. Before anything else, on every route. Each refused name is
    logged once (the first 32), so an operator behind a proxy sees what to add to ``--allowed-hosts``."""

    def __init__(self, app: ASGIApp, hosts: Collection[str]) -> None:
        self.app = app
        self.exact = frozenset(h for h in hosts if not h.startswith("*."))
        self.suffixes = tuple(h[1:] for h in hosts if h.startswith("*."))  # ".example.com"
        self._logged: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            name = host_name(next((v for k, v in scope["headers"] if k == b"host"), b""))
            if name not in self.exact and not (self.suffixes and name and name.endswith(self.suffixes)):
                self._log(name)
                await send_error(send, MisdirectedRequestError(
                    f"This server does not answer to the host {name[:100]!r}: its operator can allow it with "
                    "--allowed-hosts.", param="Host"))
                return
        await self.app(scope, receive, send)

    def _log(self, name: str) -> None:
        if name in self._logged or len(self._logged) >= _MAX_REMEMBERED_HOSTS:
            return
        self._logged.add(name)
        log.warning("refused a request for the host %r (421): not in --allowed-hosts (a DNS-rebound name, or a "
                    "name this server is reached by that should be added)", name[:100])


_DEFAULT_PORTS = {b"http": b":80", b"https": b":443"}


def _same_authority(origin: bytes, host: Optional[bytes]) -> bool:
    """Whether ``Origin`` names the host and port of the ``Host`` header (the scheme is not compared: behind a
    TLS proxy the page's https is this server's http)."""
    if host is None:
        return False
    scheme, sep, authority = origin.partition(b"://")
    if not sep:
        return False
    default = _DEFAULT_PORTS.get(scheme)
    if default is not None:
        authority = authority.removesuffix(default)
    host = host.strip().lower().removesuffix(b":80").removesuffix(b":443")
    return authority.lower() == host


class CrossOriginMiddleware:
    """Refuses (403, ``cross_origin_forbidden``) a browser request made by a page of another origin, unless
    ``--cors-origins`` allows that origin (then Starlette's ``CORSMiddleware``, inside this one, answers its
    preflight and adds the CORS headers).

    A browser says where a request comes from: ``Sec-Fetch-Site`` (every current browser; a page cannot set it)
    and ``Origin`` (on every cross-origin request but a plain GET, and on every POST). A request with neither is
    not from a page (an SDK, curl, Prometheus) and passes. Passes too: ``same-origin`` and ``none`` (the user
    typed the address), an ``Origin`` equal to the ``Host``, and a top-level GET navigation (a link to the
    dashboard: read-only, and the page it opens is then same-origin). Everything else is refused before any
    route sees it: a cross-site ``fetch``, form post, ``<img>``, or the preflight of one, which so gets no CORS
    header and the browser never sends the request. Same-site is cross-origin here: another port of localhost is
    another program."""

    def __init__(self, app: ASGIApp, allowed_origins: Collection[str] = ()) -> None:
        self.app = app
        self.any = "*" in allowed_origins
        self.allowed = frozenset(o.encode("latin-1") for o in allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            site = origin = host = mode = None
            for name, value in scope["headers"]:
                if name == b"sec-fetch-site":
                    site = value
                elif name == b"origin":
                    origin = value
                elif name == b"host":
                    host = value
                elif name == b"sec-fetch-mode":
                    mode = value
            if (site is not None or origin is not None) and self._refused(scope["method"], site, origin, host, mode):
                await send_error(send, CrossOriginError(
                    "A web page of another origin may not call this server (its operator can allow an origin with "
                    "--cors-origins).", param="Origin"))
                return
        await self.app(scope, receive, send)

    def _refused(self, method: str, site: Optional[bytes], origin: Optional[bytes], host: Optional[bytes],
                 mode: Optional[bytes]) -> bool:
        if site in (b"same-origin", b"none"):
            return False
        if origin is not None and (self.any or origin.lower() in self.allowed or _same_authority(origin, host)):
            return False
        return not (mode == b"navigate" and method in ("GET", "HEAD"))


#: what a page of an allowed origin may send and read (CORSMiddleware's lists)
CORS_REQUEST_HEADERS = ("authorization", "content-type", "idempotency-key", "x-request-id", "x-unimodel-route",
                        "x-unimodel-priority", "x-api-key", "anthropic-version", "anthropic-beta")
CORS_EXPOSED_HEADERS = ("x-request-id", "x-unimodel-route", "x-unimodel-upstream", "x-unimodel-reasoning",
                        "x-unimodel-token-count", "idempotent-replayed", "retry-after", "retry-after-ms", "x-should-retry",
                        *(f"x-ratelimit-{what}-{unit}" for what in ("limit", "remaining", "reset")
                          for unit in ("requests", "tokens")))
