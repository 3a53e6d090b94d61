"""Exception handlers: everything leaves the server in the OpenAI error shape."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from unimodel.errors import UnimodelError
from unimodel.service.errors import validation_to_error  # noqa: F401  (re-exported for tests)

log = logging.getLogger("unimodel.server")


def error_response(exc: UnimodelError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers={**(headers or {}), **exc.headers()})


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
