"""pydantic validation errors → one OpenAI-shaped 400 naming the most specific field."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from unimodel.errors import InvalidRequestError


def validation_to_error(exc: ValidationError) -> InvalidRequestError:
    """The most specific problem of a pydantic error (the deepest location: for a value that matches no
    member of a union, the member that got furthest), with ``param`` as a path like ``messages[0].content``."""
    err = max(exc.errors(), key=lambda e: len(_param_path(e.get("loc", ())) or ""))
    param = _param_path(err.get("loc", ()))
    param = param[:256] if param else param  # a path may hold a client's dict key: bounded
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    where = f"'{param}': " if param else ""
    return InvalidRequestError(f"Invalid request: {where}{msg}", param=param)


_TYPE_LABELS = {"str", "int", "float", "bool", "dict", "list", "none", "TextPart", "ImagePart", "NamedToolChoice"}


def _param_path(loc: tuple[Any, ...]) -> str | None:
    out = ""
    previous: Any = None
    for part in loc:
        if part == previous and isinstance(part, str):
            continue  # a tagged union repeats its tag ("image_url") before the field of the same name
        previous = part
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in str(part) or part in _TYPE_LABELS:
            continue  # pydantic's union member and validator labels are not field names
        else:
            out += ("." if out else "") + str(part)
    return out or None
