"""Body → JSON object → :class:`ChatCompletionRequest` (by the call's API shape, ``service/shape.py``), refusing what would hurt the server before pydantic sees it.

Checks no library makes for us, each a 400 naming the place: JSON nested deeper than ``max_depth`` (5,000
levels made the decoder raise ``RecursionError``, a 500), strings holding a lone UTF-16 surrogate such as
``"\\ud800"`` (valid JSON, but no UTF-8 encoder downstream accepts it), and a top level that is not an object.
The surrogate scan only runs when the raw body contains a ``\\uD8xx``–``\\uDFxx`` escape, so ordinary bodies
pay one C-speed regex search.

Before the body is read, its declared type (with ``json_only``, the default of every server): a body not sent as
``Content-Type: application/json`` (or ``application/*+json``) is a 415. A browser sends ``text/plain``, a form
type or, for a ``Blob`` body, no type at all across sites without asking first (no CORS preflight); JSON it
sends only after a preflight this server does not grant. Without API keys, a body with no type is refused too;
with keys it is read as JSON, as FastAPI-based servers (vLLM) do, since a browser cannot attach the key without
that preflight.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from pydantic import ValidationError

from unimodel.errors import InvalidRequestError, UnsupportedMediaTypeError
from unimodel.protocol.openai import ChatCompletionRequest
from unimodel.service.errors import validation_to_error
from unimodel.service.pipeline import Call, Stage

DEFAULT_MAX_JSON_DEPTH = 64

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_chat_body(body: bytes, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> ChatCompletionRequest:
    data = parse_json_object(body, max_depth)
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise validation_to_error(exc) from None


def parse_json_object(body: bytes, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> dict[str, Any]:
    """The body as a JSON object, refused (400) if it is not one, nests too deep or holds lone surrogates."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise InvalidRequestError(f"The request body nests JSON deeper than {max_depth} levels.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {_short(exc)}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    check_json_depth(data, max_depth)
    if _SURROGATE_ESCAPE.search(body):
        check_no_lone_surrogates(data)
    return data


def check_json_content_type(content_type: Optional[str], untyped_ok: bool) -> None:
    """Refuse (415) a body whose ``Content-Type`` is not JSON; one with none only when ``untyped_ok`` is off."""
    if content_type is None:
        if untyped_ok:
            return
    else:
        media = content_type.partition(";")[0].strip().lower()
        if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
            return
    got = "none" if content_type is None else repr(content_type[:100])
    raise UnsupportedMediaTypeError(f"Send the request body as JSON, with the header Content-Type: application/json "
                                    f"(the request's Content-Type: {got}).", param="Content-Type")


def check_json_depth(data: Any, max_depth: int) -> None:
    """Refuse containers nested deeper than ``max_depth`` (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > max_depth:
            path = _path_to(data, lambda v, d: d > max_depth and isinstance(v, (dict, list)))
            raise InvalidRequestError(f"'{path}' nests JSON deeper than {max_depth} levels.", param=path)
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values() if isinstance(v, (dict, list)))
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value if isinstance(v, (dict, list)))


def check_no_lone_surrogates(data: Any) -> None:
    def bad(value: Any, _: int) -> bool:
        return isinstance(value, str) and _SURROGATE.search(value) is not None

    path = _path_to(data, bad, keys_too=True)
    if path is not None:
        raise InvalidRequestError(
            f"'{path}' holds a lone UTF-16 surrogate (such as \\ud800), which is not valid Unicode text.",
            param=path)


def _path_to(data: Any, found: Any, keys_too: bool = False) -> Optional[str]:
    """The path (``messages[0].content``) of the first value for which ``found(value, depth)`` holds."""
    stack: list[tuple[Any, int, str]] = [(data, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        if found(value, depth):
            return (path or "body")[:256]
        if isinstance(value, dict):
            for k, v in value.items():
                if keys_too and found(k, depth):
                    return ((path + "." if path else "") + "<key>")[:256]
                stack.append((v, depth + 1, f"{path}.{k}" if path else str(k)))
        elif isinstance(value, list):
            stack.extend((v, depth + 1, f"{path}[{i}]") for i, v in enumerate(value))
    return None


def _short(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) <= 200 else text[:200] + "…"


class ParseStage(Stage):
    """Reads the body and parses it into the wire request (after auth, so strangers never make us parse)."""

    name = "parse"

    def __init__(self, max_depth: int = DEFAULT_MAX_JSON_DEPTH, *, json_only: bool = False,
                 untyped_ok: bool = True) -> None:
        self.max_depth = max_depth
        self.json_only = json_only  # compose.py turns it on (--json-only, the default)
        self.untyped_ok = untyped_ok  # a body with no Content-Type: read as JSON (API keys configured) or refused

    async def enter(self, call: Call) -> None:
        if self.json_only:  # before the body is read: a refused request never buffers one
            check_json_content_type(call.headers.get("content-type"), self.untyped_ok)
        data = parse_json_object(await call.read_body(), self.max_depth)
        request = call.client_request = await call.shape.to_chat(data, call)
        call.ctx.stream = request.stream
        call.ctx.user = request.user
