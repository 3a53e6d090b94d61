"""API-key check for the ``/v1`` routes (the full key → tenant mapping lives in ``gateway/`` later)."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from unimodel.errors import AuthenticationError


def check_api_key(request: Request, keys: list[str]) -> None:
    if not keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError("Missing API key: send 'Authorization: Bearer KEY'.")
    if not any(hmac.compare_digest(token.strip().encode(), k.encode()) for k in keys):
        raise AuthenticationError("Incorrect API key provided.")
