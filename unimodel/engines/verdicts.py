"""Which failures are retried, and how long to wait before the next try.

Every failure an engine raises before its first event falls in one :class:`Verdict`:

* ``CLIENT`` — the request's own fault (a 400, a context too long, an upstream's 4xx about the request):
  raised at once, never retried, never sent elsewhere; the upstream did answer, so its breaker counts a
  success;
* ``RETRY`` — transient: a connection refused or reset, a connect timeout, 502/503/504.
  Retried on the same upstream after a backoff, then the next upstream; counted by the breaker;
* ``THROTTLED`` — an upstream 429, a local queue that is full, or our own engine saying it is not ready (vLLM
  starting or restarting under its supervisor, a model loading): retried after its ``Retry-After`` when that
  is short enough, else the next upstream, else the error itself; not counted by the breaker (the engine knows
  its state and answers at once; counting it kept the circuit open for a cooldown after a restarted vLLM was
  ready again, measured against real vLLM);
* ``FAILOVER`` — this upstream failed in a way retrying it will not fix (an HTTP 500, a read timeout, no first
  token in time, a malformed stream, refused credentials, an engine bug): the next upstream; counted.

Waits use exponential backoff with full jitter (AWS's "Exponential Backoff And Jitter"): a try ``k`` (1, 2 …)
waits a uniform random time in ``[0, min(cap, base · 2^(k-1))]``. Written by hand: tenacity and backoff retry a
call, where we retry only until a stream's first event and need the verdicts above.
"""

from __future__ import annotations

import enum
import random
from typing import Optional

import aiohttp

from unimodel.engines.breaker import CircuitBreaker, Permit
from unimodel.errors import (
    OverloadedError,
    RateLimitError,
    ServiceUnavailableError,
    UnimodelError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)

RETRYABLE_STATUSES = frozenset({502, 503, 504})

# transport failures (the upstream engine's aiohttp client) where the request most likely never reached the
# model: retrying is safe and useful. A connect failure (ClientConnectorError), a connect or pool timeout
# (ConnectionTimeoutError), the upstream closing or resetting the connection (ServerDisconnectedError,
# ClientOSError, ClientConnectionResetError), a broken body (ClientPayloadError) or an answer that is not HTTP
# (ClientResponseError: raise_for_status is off, so aiohttp raises it only for a response it cannot parse)
_TRANSIENT_CAUSES: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError, aiohttp.ClientConnectionResetError, aiohttp.ClientPayloadError,
    aiohttp.ClientResponseError,
)


class Verdict(enum.Enum):
    CLIENT = "client"
    RETRY = "retry"
    THROTTLED = "throttled"
    FAILOVER = "failover"

    @property
    def counts_as_failure(self) -> bool:
        return self in (Verdict.RETRY, Verdict.FAILOVER)

    @property
    def may_retry(self) -> bool:
        return self in (Verdict.RETRY, Verdict.THROTTLED)


def classify(exc: BaseException) -> Verdict:
    """The verdict on a failure raised before the first event (see the module docstring)."""
    if isinstance(exc, (RateLimitError, OverloadedError)):
        return Verdict.THROTTLED
    if isinstance(exc, UpstreamConnectionError):
        return Verdict.RETRY
    if isinstance(exc, UpstreamStatusError):
        if exc.upstream_status in RETRYABLE_STATUSES:
            return Verdict.RETRY
        return Verdict.CLIENT if 400 <= exc.upstream_status < 500 else Verdict.FAILOVER
    if isinstance(exc, UpstreamTimeoutError):
        # connecting (or waiting for a pooled connection) took too long: retry; a read timeout: the next upstream
        return Verdict.RETRY if isinstance(exc.__cause__, aiohttp.ConnectionTimeoutError) else Verdict.FAILOVER
    if isinstance(exc, UpstreamError):
        return Verdict.RETRY if isinstance(exc.__cause__, _TRANSIENT_CAUSES) else Verdict.FAILOVER
    if isinstance(exc, ServiceUnavailableError):  # our engine not ready (its own state) vs. e.g. a circuit open
        return Verdict.THROTTLED if exc.code == ServiceUnavailableError.code else Verdict.RETRY
    if isinstance(exc, UnimodelError) and 400 <= exc.status_code < 500:
        return Verdict.CLIENT
    return Verdict.FAILOVER


def judged(breaker: CircuitBreaker, permit: Permit, exc: Exception, caller: str) -> Verdict:
    """Tell ``breaker`` what a failure before the first event says about its upstream, and return the verdict:
    the request's own fault is a success of the upstream's (it answered), a failure that counts is counted
    against ``caller``, anything else gives the permit back without a verdict."""
    verdict = classify(exc)
    if verdict is Verdict.CLIENT:
        breaker.success(permit)
    elif verdict.counts_as_failure:
        breaker.failure(permit, caller)
    else:
        breaker.release(permit)
    return verdict


class Backoff:
    """Full-jitter exponential backoff, every wait at most ``cap_s``."""

    def __init__(self, base_s: float = 0.2, cap_s: float = 5.0, rng: Optional[random.Random] = None) -> None:
        if base_s < 0 or cap_s < 0:
            raise ValueError("backoff: base and cap must be ≥ 0")
        self.base_s = base_s
        self.cap_s = cap_s
        self._rng = rng or random.Random()

    def ceiling(self, attempt: int) -> float:
        """The longest wait before retry number ``attempt`` (1-based)."""
        if attempt < 1:
            return 0.0
        return min(self.cap_s, self.base_s * 2.0 ** min(attempt - 1, 62))

    def wait(self, attempt: int) -> float:
        return self._rng.uniform(0.0, self.ceiling(attempt))

    def wait_for(self, exc: BaseException, attempt: int) -> Optional[float]:
        """How long to wait before retrying after ``exc``; ``None`` when its ``Retry-After`` is longer than we
        would wait (give up on this upstream)."""
        retry_after = exc.retry_after if isinstance(exc, UnimodelError) else None
        if retry_after is None:
            return self.wait(attempt)
        if retry_after > self.cap_s:
            return None
        return float(retry_after)
