"""Body → :class:`ChatCompletionRequest`, refusing what would hurt the server before pydantic sees it.

Checks no library makes for us, each a 400 naming the place: JSON nested deeper than ``max_depth`` (5,000
levels made the decoder raise ``RecursionError``, a 500), strings holding a lone UTF-16 surrogate such as
``"\\ud800"`` (valid JSON, but no UTF-8 encoder downstream accepts it), and a top level that is not an object.
The surrogate scan only runs when the raw body contains a ``\\uD8xx``–``\\uDFxx`` escape, so ordinary bodies
pay one C-speed regex search.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

from pydantic import ValidationError

from unimodel.errors import InvalidRequestError
from unimodel.protocol.openai import ChatCompletionRequest
from unimodel.service.errors import validation_to_error
from unimodel.service.pipeline import Call, Stage

DEFAULT_MAX_JSON_DEPTH = 64

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def parse_chat_body(body: bytes, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> ChatCompletionRequest:
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
    try:
        return ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        raise validation_to_error(exc) from None


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

    def __init__(self, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> None:
        self.max_depth = max_depth

    async def enter(self, call: Call) -> None:
        request = call.client_request = parse_chat_body(await call.read_body(), self.max_depth)
        call.ctx.stream = request.stream
        call.ctx.user = request.user
