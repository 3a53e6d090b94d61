"""Whether a Redis store's server answers now, for ``/ready``: the newest of what its own calls saw and a PING.

A store only learns of an outage from a call that fails, so a quiet gateway (no requests with limits or an
``Idempotency-Key``) would say Redis is up for as long as it has been down. :meth:`RedisHealth.check` asks
Redis itself: one PING under a short timeout, at most every ``every_s`` seconds (what was seen less than that
ago, by a PING or by a request's own call, is the answer), shared by every caller that asks meanwhile (one
PING in flight, whatever the number of ``/ready`` probes), and a caller waits for it at most ``timeout_s``: a
paused Redis never holds ``/ready`` up longer than that. The store tells :meth:`saw` the outcome of each of its
own calls, so a request's failure shows at once and a success clears a PING's "down".

Hand-written: a few lines around redis-py's ``ping``; health-check libraries run their own scheduler and
report through their own endpoint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Optional

EVERY_S = 2.0  # the longest a PING's answer is reused
MAX_WAIT_S = 1.0  # the longest a PING (and so /ready) waits, whatever the store's own timeout


def outage_errors() -> tuple[type[BaseException], ...]:
    """What a Redis call raises when the server cannot answer (redis-py's errors, a socket's, a timeout)."""
    from redis.exceptions import RedisError

    return (RedisError, OSError, asyncio.TimeoutError)


class RedisHealth:
    """The last known state of one Redis server, and a bounded, cached way to refresh it (module docstring)."""

    def __init__(self, timeout_s: float, every_s: float = EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s, self.every_s = min(timeout_s, MAX_WAIT_S), every_s
        self._clock = clock
        self._up: Optional[bool] = None  # None: not known yet
        self._seen_at = float("-inf")
        self._error: Optional[str] = None
        self._ping: Optional[asyncio.Future[None]] = None

    @property
    def up(self) -> Optional[bool]:
        return self._up

    def saw(self, up: bool, error: Optional[BaseException] = None) -> None:
        """A call to Redis succeeded (``up``) or failed with ``error``, just now."""
        self._up, self._seen_at = up, self._clock()
        self._error = None if up else type(error).__name__ if error is not None else "no answer"

    async def check(self, ping: Callable[[], Awaitable[Any]]) -> bool:
        """Whether Redis answers: what was seen within ``every_s``, else a PING (``ping()``), awaited at most
        ``timeout_s``. Never raises but for cancellation (which leaves the PING running for the next caller)."""
        if self._clock() - self._seen_at >= self.every_s:
            if self._ping is None or self._ping.done():
                self._ping = asyncio.ensure_future(self._pinged(ping))
            await asyncio.wait({self._ping}, timeout=self.timeout_s)
            if not self._ping.done() and self._clock() - self._seen_at >= self.every_s:
                self.saw(False, asyncio.TimeoutError())  # a PING this slow: a Redis no request can use
        return bool(self._up)

    def status(self) -> dict[str, Any]:
        """``redis``: up, down or unknown (nothing asked yet); ``redis_seen_s_ago``; ``redis_error`` when down."""
        out: dict[str, Any] = {"redis": "unknown" if self._up is None else "up" if self._up else "down"}
        if self._up is not None:
            out["redis_seen_s_ago"] = round(self._clock() - self._seen_at, 1)
        if self._up is False:
            out["redis_error"] = self._error
        return out

    async def aclose(self) -> None:
        ping, self._ping = self._ping, None
        if ping is not None and not ping.done():
            ping.cancel()
            await asyncio.gather(ping, return_exceptions=True)

    async def _pinged(self, ping: Callable[[], Awaitable[Any]]) -> None:
        try:
            await asyncio.wait_for(ping(), self.timeout_s)
        except outage_errors() as exc:
            self.saw(False, exc)
        else:
            self.saw(True)
