"""Exception handlers: everything leaves the server in the OpenAI error shape."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from unimodel.errors import InvalidRequestError, UnimodelError

log = logging.getLogger("unimodel.server")


def error_response(exc: UnimodelError) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=exc.headers())


def validation_to_error(exc: ValidationError) -> InvalidRequestError:
    """The most specific problem of a pydantic error (the deepest location: for a value that matches no
    member of a union, the member that got furthest), with ``param`` as a path like ``messages[0].content``."""
    err = max(exc.errors(), key=lambda e: len(_param_path(e.get("loc", ())) or ""))
    param = _param_path(err.get("loc", ()))
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


def install(app: FastAPI) -> None:
    @app.exception_handler(UnimodelError)
    async def _unimodel(_: Request, exc: UnimodelError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = UnimodelError(str(exc.detail), status_code=exc.status_code,
                            code="not_found" if exc.status_code == 404 else "http_error")
        err.error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(err.to_dict(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(UnimodelError("The server had an internal error; it is logged."))
