"""The first pipeline stage: who is calling. ``Authorization: Bearer KEY`` against the configured keys.

Keys are compared in constant time. The context gets the key's name (``key-1``, ``key-2`` … in the order of
``--api-key``), never the key itself. With no keys configured, every caller is ``anonymous``.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from unimodel.errors import AuthenticationError
from unimodel.service.context import Caller
from unimodel.service.pipeline import Call, Stage


class ApiKeyAuth(Stage):
    name = "auth"

    def __init__(self, keys: Sequence[str]) -> None:
        self._keys = [(f"key-{i}", k.encode()) for i, k in enumerate(keys, start=1)]

    async def enter(self, call: Call) -> None:
        if not self._keys:
            call.ctx.key_name = "anonymous"
            return
        scheme, _, token = call.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("Missing API key: send 'Authorization: Bearer KEY'.")
        given = token.strip().encode("utf-8", "replace")
        name = None
        for key_name, key in self._keys:  # every key compared, so timing says nothing about which matched
            if hmac.compare_digest(given, key) and name is None:
                name = key_name
        if name is None:
            raise AuthenticationError("Incorrect API key provided.")
        call.ctx.key_name = name
        call.ctx.caller = Caller(name=name)
