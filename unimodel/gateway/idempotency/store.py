"""The contract an idempotency store keeps: claim a key, wait for its first request, store or release it.

One key (already scoped to the caller and hashed by the stage) is, at any time, absent, *in flight* (claimed
by the request that runs, with that request's body fingerprint and a token only it knows), or *done* (the
stored response, until its TTL). :meth:`IdempotencyStore.claim` moves an absent key to in flight atomically
and says which state it found otherwise, so of any number of concurrent duplicates exactly one runs.
A shared store's in-flight claim expires ``claim_ttl_s`` after its owner last renewed it (the owner renews it
while its request runs; a replica that died mid-request must not hold a key for long), and a release that
could not reach the store is retried until the claim would have expired anyway. Stores raise
:class:`StoreUnavailableError` for an outage, never their client's errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Union


class StoreUnavailableError(RuntimeError):
    """The store cannot be reached (Redis down or timing out); the stage decides what that means."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """The caller owns the key: run the request, then :meth:`~IdempotencyStore.finish` or ``release``."""

    token: str


@dataclass(frozen=True, slots=True)
class InFlight:
    """Another request with this key is running; ``fingerprint`` is its body's."""

    fingerprint: str


@dataclass(frozen=True, slots=True)
class Done:
    """The key's stored response (a :mod:`record` encoding)."""

    record: bytes


ClaimResult = Union[Claimed, InFlight, Done]


class IdempotencyStore(Protocol):
    kind: str
    #: ``finish`` and ``release`` do I/O (so the stage shields them from a cancelled request); a store whose
    #: calls never suspend is settled inline
    remote: bool

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    async def claim(self, key: str, fingerprint: str) -> ClaimResult:
        """Claim ``key`` if it is absent (or its claim expired); else say what holds it."""

    async def wait(self, key: str, timeout_s: float) -> None:
        """Return once ``key`` is no longer in flight, or after ``timeout_s``; the caller claims again."""

    async def finish(self, key: str, token: str, record: bytes) -> None:
        """Store ``record`` for ``key`` (for the store's TTL) if ``token`` still owns the claim."""

    async def release(self, key: str, token: str) -> None:
        """Drop the claim (the request failed or was abandoned) if ``token`` still owns it."""

    def status(self) -> dict[str, Any]: ...

    async def check(self) -> bool:
        """Whether the store's backend answers now (Redis: a cached PING under a short timeout); for
        ``/ready``, never per request."""
