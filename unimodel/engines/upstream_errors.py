"""What an OpenAI-compatible upstream's errors become: our error, with what the client may see.

Three ways an upstream says it failed, mapped here in one place: an error status with its body
(:func:`response_error`, the engine's), an error object inside a stream frame or a 200 body
(:func:`raise_embedded_error`, the decoder's), and, under both, a status and message (:func:`status_error`).

What the upstream says about the client's own request (a 4xx) is passed on (at most
:data:`CLIENT_MESSAGE_CHARS` of it); anything else (its internals, its view of our credentials) only reaches our
log, and the client gets our own short text. A 429 keeps the upstream's ``Retry-After`` so the resilience stage
and the client can honour it. The log gets an excerpt of what the upstream said, never the body itself: at most
:data:`~unimodel.printable.EXCERPT_CHARS` characters, redacted (an upstream that echoes the prompt would put the
client's personal data there) and with its control characters escaped (:func:`unimodel.printable.excerpt`).

Pure functions over bytes and headers (no aiohttp types), so they are tested and reused without a connection.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, NoReturn, Optional

from unimodel.errors import RateLimitError, UnimodelError, UpstreamError, UpstreamStatusError
from unimodel.printable import EXCERPT_CHARS, excerpt

log = logging.getLogger("unimodel.upstream")

CREDENTIALS_REFUSED = "the upstream refused the gateway's credentials; check --upstream-api-key"
#: the most of an upstream's 4xx message a client is passed (an upstream may answer a body of any size)
CLIENT_MESSAGE_CHARS = 2048
_TOKEN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
#: OpenAI's error vocabulary: a ``type`` ends in ``_error``, a ``code`` is a snake_case word; vLLM sends its
#: exception's class name as the type and the HTTP status as the code, which a client cannot switch on
_OPENAI_TYPE = re.compile(r"[a-z][a-z_]{0,62}_error")
_OPENAI_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: how OpenAI and vLLM word a prompt over the model's context (vLLM: "This model's maximum context length is 1024
#: tokens. However, your prompt contains …"; OpenAI adds the code itself)
_CONTEXT_LENGTH = re.compile(r"maximum context length|context length exceeded|exceeds the context", re.I)


def response_error(status: int, headers: Mapping[str, str], raw: bytes,
                   charset: Optional[str] = None) -> UnimodelError:
    """Our error for an upstream's error status, from its headers and body as received (``charset``: the
    body's declared charset, for the log). See :func:`status_error` for what the client is told."""
    message, param, code, etype = f"the upstream answered HTTP {status}", None, None, None
    try:
        body = json.loads(raw or b"null")
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the interpreter's stack
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or message)
        param = err.get("param") if isinstance(err.get("param"), str) else None
        code = _token(str(err["code"])) if err.get("code") is not None else None
        etype = _token(err["type"]) if isinstance(err.get("type"), str) else None
    elif isinstance(body, dict) and isinstance(body.get("message"), str):
        message = body["message"]  # vLLM's older flat error shape
    elif isinstance(err, str):
        message = err
    return status_error(status, message, param=param, code=code, error_type=etype,
                        retry_after=_retry_after(headers), body=_text(raw, charset))


def status_error(status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None,
                 error_type: Optional[str] = None, retry_after: Optional[float] = None,
                 body: Optional[str] = None) -> UnimodelError:
    """Our error for an upstream's error status. Only a 4xx about the client's own request passes the
    upstream's message on (bounded); an excerpt of what the upstream said (``body``, else ``message``) is always
    logged."""
    client_fault = 400 <= status < 500 and status not in (401, 403, 429)
    log.log(logging.INFO if client_fault else logging.WARNING, "the upstream answered %d: %s", status,
            excerpt(body or message))
    if status in (401, 403):  # the gateway's own credentials: never the client's fault, never its business
        return UpstreamError(CREDENTIALS_REFUSED)
    if status == 429:
        return RateLimitError("the upstream is rate limiting requests; retry later", retry_after=retry_after)
    if client_fault:
        if len(message) > CLIENT_MESSAGE_CHARS:
            message = message[:CLIENT_MESSAGE_CHARS] + "…"
        code = code if code and _OPENAI_CODE.fullmatch(code) else None
        error_type = error_type if error_type and _OPENAI_TYPE.fullmatch(error_type) else None
        if status == 400 and code is None and _CONTEXT_LENGTH.search(message):
            code, param = "context_length_exceeded", "messages"
        return UpstreamStatusError(message, upstream_status=status, param=param, code=code, error_type=error_type)
    return UpstreamStatusError(f"the upstream failed (HTTP {status})", upstream_status=status)


def raise_embedded_error(err: Any) -> NoReturn:
    """An error object inside a stream frame or a 200 body (vLLM sends these when it fails mid-way)."""
    if isinstance(err, dict):
        message = str(err.get("message") or "the upstream reported an error")
        code = err.get("code")
        status = code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code < 600 else 502
        param = err.get("param") if isinstance(err.get("param"), str) else None
        raise status_error(status, message, param=param)
    log.warning("the upstream reported an error: %s", excerpt(str(err)))
    raise UpstreamError("the upstream reported an error")


def _token(value: str) -> Optional[str]:
    """An upstream's error ``code``/``type`` when it is a short token (``context_length_exceeded``, ``400``), else
    ``None``: the code becomes the request's ``error_type`` in the access and request logs."""
    return value if _TOKEN.fullmatch(value) else None


def _text(raw: bytes, charset: Optional[str]) -> str:
    """The start of a body as text for our log (enough for its excerpt), in its declared charset (else UTF-8),
    never failing."""
    raw = raw[:EXCERPT_CHARS * 8]
    try:
        return raw.decode(charset or "utf-8", "replace")
    except LookupError:  # a charset Python does not know
        return raw.decode("utf-8", "replace")


def _retry_after(headers: Mapping[str, str]) -> Optional[float]:
    """``Retry-After`` in seconds, from seconds or an HTTP-date (or OpenAI's ``retry-after-ms``)."""
    value = headers.get("retry-after", "").strip()
    if value:
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            seconds = (when - datetime.now(timezone.utc)).total_seconds()
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        ms = float(headers.get("retry-after-ms", ""))
    except ValueError:
        return None
    return max(0.0, ms / 1000) if math.isfinite(ms) else None
