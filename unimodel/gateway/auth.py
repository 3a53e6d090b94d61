"""The first pipeline stage: who is calling. ``Authorization: Bearer KEY`` against the configured keys.

Two kinds of key: the plain ``--api-key`` keys (each named ``key-`` and 8 hex digits derived from the key
itself, so removing one renames no other: :func:`~unimodel.gateway.keys.plain_key_name`; compared in constant
time), and the named keys of the config file, stored as salted scrypt hashes, each with its own
policy (:mod:`unimodel.gateway.keys` checks them, once per distinct key per process). The context gets the
key's name and its policy as a :class:`~unimodel.service.context.Caller`, never the key itself. With no keys
configured, every caller is ``anonymous``. Missing or wrong key: 401 ``invalid_api_key``; a revoked key: 401
with its own message (and the same type and code).
"""

from __future__ import annotations

from collections.abc import Sequence

from unimodel.errors import AuthenticationError
from unimodel.gateway.keys import MISSING, KeyRing
from unimodel.gateway.policy import KeyPolicy
from unimodel.service.pipeline import Call, Stage


class ApiKeyAuth(Stage):
    name = "auth"

    def __init__(self, keys: Sequence[str] = (), named: Sequence[KeyPolicy] = ()) -> None:
        self.ring = KeyRing(keys, named)

    async def aclose(self) -> None:
        self.ring.close()

    async def enter(self, call: Call) -> None:
        if not self.ring.enabled:
            call.ctx.key_name = "anonymous"
            return
        scheme, _, token = call.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError(MISSING)
        caller = await self.ring.caller(token.strip())
        call.ctx.key_name = caller.name
        call.ctx.caller = caller
