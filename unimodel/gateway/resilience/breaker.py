"""A circuit breaker per upstream: stop sending requests to an upstream that keeps failing, probe it later.

States: **closed** (requests pass; failures are counted) → **open** after ``failures`` upstream failures in a
row within ``window_s`` seconds (a success in between starts the count again, as Envoy's ``consecutive_5xx``
does: a busy upstream with a few scattered errors stays in service) → **half-open** once ``cooldown_s`` has
passed: exactly one request, the probe, goes through → **closed** when the probe succeeds, **open** again (a
new cooldown) when it fails. A probe whose request ends without a verdict (its client left, or the request
itself was at fault) frees the slot for the next request.

What counts is decided by the caller (:mod:`.retry`): only upstream failures, never a client's error or a
client that left. Written by hand: the state machine is a few dozen lines, its clock has to be injectable for
tests, and it runs on the event loop only (no locks); the libraries (pybreaker, aiobreaker) wrap calls, where
we need to settle a verdict at the first streamed event.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, Optional

log = logging.getLogger("unimodel.resilience")

BreakerState = Literal["closed", "open", "half-open"]


class Permit:
    """A request's pass through the breaker; ``probe`` when it is the one half-open trial request."""

    __slots__ = ("probe",)

    def __init__(self, probe: bool) -> None:
        self.probe = probe


NO_PROBE = Permit(False)  # every pass but the half-open probe


class CircuitBreaker:
    """One upstream's breaker. ``failures=0`` disables it (every request passes, nothing is counted)."""

    def __init__(self, name: str, *, failures: int = 5, window_s: float = 30.0, cooldown_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failures < 0 or window_s <= 0 or cooldown_s <= 0:
            raise ValueError("breaker: failures ≥ 0, window and cooldown > 0")
        self.name = name
        self.failures = failures
        self.window_s = window_s
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state: BreakerState = "closed"
        self._recent: deque[float] = deque()  # times of the current run of failures
        self._opened_at = 0.0
        self._probing = False
        self.opened = 0  # how many times it opened, for /ready

    @property
    def enabled(self) -> bool:
        return self.failures > 0

    @property
    def state(self) -> BreakerState:
        if self._state == "open" and self._clock() - self._opened_at >= self.cooldown_s:
            self._state = "half-open"
            self._probing = False
            log.info("upstream %s: circuit half-open, the next request probes it", self.name)
        return self._state

    def retry_after(self) -> float:
        """Seconds until a request may pass again (0 when one may pass now)."""
        state = self.state
        if state == "open":
            return max(0.0, self.cooldown_s - (self._clock() - self._opened_at))
        if state == "half-open" and self._probing:
            return min(1.0, self.cooldown_s)
        return 0.0

    def allow(self) -> Optional[Permit]:
        """A permit when a request may go to this upstream now, else ``None`` (open, or a probe is out)."""
        if not self.enabled:
            return NO_PROBE
        state = self.state
        if state == "closed":
            return NO_PROBE
        if state == "half-open" and not self._probing:
            self._probing = True
            return Permit(True)
        return None

    def success(self, permit: Permit) -> None:
        """The upstream answered (its first event, or a refusal of the request's own fault)."""
        if not self.enabled:
            return
        if permit.probe:
            self._probing = False
            if self._state == "half-open":
                self._state = "closed"
                self._recent.clear()
                log.warning("upstream %s: the probe succeeded, circuit closed", self.name)
        elif self._state == "closed":
            self._recent.clear()

    def failure(self, permit: Permit) -> None:
        """An upstream failure (connection, 5xx, timeout, a stream that broke)."""
        if not self.enabled:
            return
        now = self._clock()
        if permit.probe:
            self._probing = False
            if self._state == "half-open":
                self._open(now, "the probe failed")
            return
        if self._state != "closed":
            return  # a request let through before the circuit opened: already counted as open
        recent = self._recent
        recent.append(now)
        while recent and now - recent[0] > self.window_s:
            recent.popleft()
        if len(recent) >= self.failures:
            self._open(now, f"{len(recent)} failures in a row within {self.window_s:g} s")

    def release(self, permit: Permit) -> None:
        """The request ended without a verdict on the upstream (its client left): free the probe slot."""
        if permit.probe:
            self._probing = False

    def _open(self, now: float, why: str) -> None:
        self._state = "open"
        self._opened_at = now
        self._recent.clear()
        self.opened += 1
        log.warning("upstream %s: circuit open for %g s (%s)", self.name, self.cooldown_s, why)

    def snapshot(self) -> dict[str, Any]:
        """For ``/ready``: the state, the current run of failures, and when the circuit lets requests in."""
        if not self.enabled:
            return {"breaker": "disabled"}
        state = self.state
        now = self._clock()
        recent = sum(1 for t in self._recent if now - t <= self.window_s)
        out: dict[str, Any] = {"breaker": state, "failures": recent, "opened": self.opened}
        if state == "open":
            out["retry_in_s"] = round(self.retry_after(), 3)
        return out
