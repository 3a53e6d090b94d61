"""The first pipeline stage: who is calling. ``Authorization: Bearer KEY`` against the configured keys.

Two kinds of key: the plain ``--api-key`` keys (each named ``key-`` and 8 hex digits derived from the key
itself, so removing one renames no other: :func:`~unimodel.gateway.keys.plain_key_name`; compared in constant
time), and the named keys of the config file, stored as salted scrypt hashes, each with its own
policy (:mod:`unimodel.gateway.keys` checks them, once per distinct key per process). The context gets the
key's name and its policy as a :class:`~unimodel.service.context.Caller`, never the key itself. With no keys
configured, every caller is ``anonymous``. Missing or wrong key: 401 ``invalid_api_key``; a revoked key: 401
with its own message (and the same type and code).

The key may also come as ``x-api-key: KEY``, the header of Anthropic's API (its SDK and Claude Code send it),
on every route alike. A request with both headers is refused (400) unless they carry the same key: which one
counts would otherwise depend on the server.
"""

from __future__ import annotations

from collections.abc import Sequence

from collections.abc import Mapping

from unimodel.errors import AuthenticationError, InvalidRequestError
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
        caller = await self.ring.caller(presented_key(call.headers))
        call.ctx.key_name = caller.name
        call.ctx.caller = caller


def presented_key(headers: Mapping[str, str]) -> str:
    """The key of ``Authorization: Bearer KEY`` or ``x-api-key: KEY`` (lower-case header names); 401 when there
    is none, 400 when both are there with different keys."""
    authorization, x_api_key = headers.get("authorization"), headers.get("x-api-key")
    bearer = None
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError(MISSING)
        bearer = token.strip()
    other = x_api_key.strip() if x_api_key is not None else None
    if bearer is not None and other is not None and bearer != other:
        raise InvalidRequestError("The request has both an Authorization header and an x-api-key header, with "
                                  "different keys: send one of them.", param="x-api-key")
    key = bearer or other
    if not key:
        raise AuthenticationError(MISSING)
    return key
