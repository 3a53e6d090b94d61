"""Who may read the server's own state: ``/ready``'s details (the stages' status: breakers, the limits store, the
idempotency store, counts), by the dashboard's rule.

With ``--admin-key`` set, only that key (compared in constant time); otherwise any API key the server accepts
(plain or named, checked by the auth stage's key ring: cached, so a key costs its KDF run once); with no key
configured at all, anyone who can reach the server, like the API itself. The key comes as
``Authorization: Bearer KEY``.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Optional

from starlette.requests import Request

from unimodel.errors import AuthenticationError
from unimodel.gateway.keys import KeyRing


@dataclass(frozen=True)
class StateAccess:
    ring: KeyRing
    admin_key: Optional[str] = None

    @property
    def protected(self) -> bool:
        return self.admin_key is not None or self.ring.enabled

    async def allows(self, request: Request) -> bool:
        """Whether this request may read the server's state (see the module docstring)."""
        if not self.protected:
            return True
        presented = bearer(request)
        if not presented:
            return False
        if self.admin_key is not None:
            return hmac.compare_digest(presented.encode("utf-8", "surrogatepass"),
                                       self.admin_key.encode("utf-8", "surrogatepass"))
        try:
            await self.ring.caller(presented)
        except AuthenticationError:
            return False
        return True


def bearer(request: Request) -> Optional[str]:
    """The key of ``Authorization: Bearer KEY``, or ``None``."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None
