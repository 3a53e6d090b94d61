"""A circuit breaker per upstream: stop sending requests to an upstream that keeps failing, probe it later.

States: **closed** (requests pass; failures are counted) → **open** after ``failures`` upstream failures in a
row within ``window_s`` seconds (a success in between starts the count again, as Envoy's ``consecutive_5xx``
does: a busy upstream with a few scattered errors stays in service) → **half-open** once ``cooldown_s`` has
passed: exactly one request, the probe, goes through → **closed** when the probe succeeds, **open** again (a
new cooldown) when it fails. A probe whose request ends without a verdict (its client left, or the request
itself was at fault) frees the slot for the next request.

An open circuit turns every caller away (a fast 503, or the fallback), so it opens on evidence about the
upstream, never on one caller's requests alone: a tenant whose prompts make the upstream fail (a 500 on some
input, a prompt so long that its first token times out) must not switch the upstream off for everyone. Each
failure is counted with its caller (the API key's name; not the client-chosen ``user``, which one key could
vary at will), and the run of ``failures`` opens the circuit at once only when it holds failures of at least
``min_callers`` callers. A run from fewer callers asks the upstream itself first: ``health`` (the engine's
own check; for an upstream, ``GET /models``) runs once, in the background, while requests go on as before; the
circuit opens when it fails, and the run is forgiven when it passes (the failures were the requests', and the
next ``failures`` of them ask again: one health check per run, never more than one at a time). A failed
half-open probe is judged the same way: with a passing health check the circuit closes again rather than
staying shut for another cooldown because of whichever request happened to be the probe. Without ``health``,
a run from too few callers opens nothing (and a failed probe re-opens, as before). ``min_callers=1`` is the
plain breaker: any ``failures`` in a row open it.

Why both signals: the health check alone misses an upstream that still lists its models but fails every
generation (an engine out of memory behind a live API server), which the failures of several callers show; the
callers alone miss a dead upstream behind a single key, which the health check shows. The cost of not opening
is small (each request tries the upstream once more, then its fallback); the cost of opening wrongly is every
tenant's 503. A tenant holding ``min_callers`` keys can still open it on a healthy upstream: keys are the
operator's to hand out, and ``min_callers`` is theirs to raise.

What counts is decided by the caller (:mod:`.verdicts`): only upstream failures, never a client's error or a
client that left. Written by hand: the state machine is a few dozen lines, its clock has to be injectable for
tests, and it runs on the event loop only (no locks); the libraries (pybreaker, aiobreaker) wrap calls, where
we need to settle a verdict at the first streamed event, and none counts callers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Optional

log = logging.getLogger("unimodel.resilience")

BreakerState = Literal["closed", "open", "half-open"]
HEALTH_TIMEOUT_S = 30.0  # the longest a health check may take (an upstream's is bounded by its connect timeout)


class Permit:
    """A request's pass through the breaker; ``probe`` when it is the one half-open trial request."""

    __slots__ = ("probe",)

    def __init__(self, probe: bool) -> None:
        self.probe = probe


NO_PROBE = Permit(False)  # every pass but the half-open probe


class CircuitBreaker:
    """One upstream's breaker. ``failures=0`` disables it (every request passes, nothing is counted).

    ``min_callers``: how many callers' failures open it without asking ``health`` (see the module docstring).
    """

    def __init__(self, name: str, *, failures: int = 5, window_s: float = 30.0, cooldown_s: float = 30.0,
                 min_callers: int = 1, health: Optional[Callable[[], Awaitable[bool]]] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failures < 0 or window_s <= 0 or cooldown_s <= 0 or min_callers < 1:
            raise ValueError("breaker: failures ≥ 0, min_callers ≥ 1, window and cooldown > 0")
        self.name = name
        self.failures = failures
        self.window_s = window_s
        self.cooldown_s = cooldown_s
        self.min_callers = min_callers
        self._health = health
        self._clock = clock
        self._state: BreakerState = "closed"
        # the current run of failures, (time, caller): enough of the last ones to hold `min_callers` callers
        self._recent: deque[tuple[float, str]] = deque(maxlen=max(failures, min_callers, 1))
        self._opened_at = 0.0
        self._probing = False
        self._probe_failed = False  # the half-open probe failed; its verdict waits for the health check
        self._check: Optional[asyncio.Task[None]] = None  # the health check in flight, at most one
        self.opened = 0  # how many times it opened, for /ready
        self.forgiven = 0  # runs of failures a passing health check pinned on their callers, for /ready

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
                self._close("the probe succeeded")
        elif self._state == "closed":
            self._recent.clear()

    def failure(self, permit: Permit, caller: str = "") -> None:
        """An upstream failure (connection, 5xx, timeout, a stream that broke) of a request by ``caller`` (its
        key's name)."""
        if not self.enabled:
            return
        now = self._clock()
        if permit.probe:
            if self._state == "half-open" and self.min_callers > 1 and self._health is not None:
                self._probe_failed = True  # the probe slot stays taken until the upstream has answered
                self._start_check()
                return
            self._probing = False
            if self._state == "half-open":
                self._open(now, "the probe failed")
            return
        if self._state != "closed":
            return  # a request let through before the circuit opened: already counted as open
        recent = self._recent
        recent.append((now, caller))
        while now - recent[0][0] > self.window_s:
            recent.popleft()
        if len(recent) < self.failures:
            return
        callers = len({c for _, c in recent})
        if callers >= self.min_callers:
            self._open(now, f"{len(recent)} failures in a row within {self.window_s:g} s, from {callers} "
                            f"caller{'s' if callers > 1 else ''}")
        elif self._health is not None:
            self._start_check()

    def _start_check(self) -> None:
        if self._check is not None:  # one in flight already: its answer serves this question too
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # told outside the event loop (a test): nothing can be asked, nothing opens
            self._probing = self._probe_failed = False
            return
        self._check = loop.create_task(self._judge(), name=f"breaker-{self.name}")

    async def _judge(self) -> None:
        """Ask the upstream whether it is healthy; open the circuit, or forgive the run (or the failed probe),
        by its answer."""
        assert self._health is not None
        healthy = False
        try:
            healthy = bool(await asyncio.wait_for(self._health(), HEALTH_TIMEOUT_S))
        except asyncio.TimeoutError:  # a check that hangs must not hold the probe slot: it failed
            log.warning("upstream %s: its health check did not answer within %g s", self.name, HEALTH_TIMEOUT_S)
        except Exception:  # a check that breaks says nothing good about the upstream
            log.warning("upstream %s: its health check failed unexpectedly", self.name, exc_info=True)
        finally:
            self._check = None
            probe, self._probe_failed = self._probe_failed, False
            if probe:
                self._probing = False
        now = self._clock()
        if probe:
            if self._state != "half-open":
                return
            if healthy:
                self.forgiven += 1
                self._close("the probe request failed but the upstream's health check passed")
            else:
                self._open(now, "the probe failed, and so did its health check")
            return
        if self._state != "closed" or len(self._recent) < self.failures:
            return  # a success started the count again meanwhile (or the circuit changed on its own)
        if healthy:
            self.forgiven += 1
            callers = ", ".join(sorted({c for _, c in self._recent}))
            self._recent.clear()
            log.warning("upstream %s: %d failures in a row, all from %s, but its health check passed: the circuit "
                        "stays closed (the failures were the requests')", self.name, self.failures, callers)
        else:
            self._open(now, f"{len(self._recent)} failures in a row, and its health check failed")

    async def aclose(self) -> None:
        """Cancel a health check in flight (the server is stopping)."""
        check, self._check = self._check, None
        if check is not None:
            check.cancel()
            await asyncio.gather(check, return_exceptions=True)

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

    def _close(self, why: str) -> None:
        self._state = "closed"
        self._recent.clear()
        log.warning("upstream %s: %s, circuit closed", self.name, why)

    def snapshot(self) -> dict[str, Any]:
        """For ``/ready``: the state, the current run of failures, and when the circuit lets requests in."""
        if not self.enabled:
            return {"breaker": "disabled"}
        state = self.state
        now = self._clock()
        recent = sum(1 for t, _ in self._recent if now - t <= self.window_s)
        out: dict[str, Any] = {"breaker": state, "failures": recent, "opened": self.opened}
        if state == "open":
            out["retry_in_s"] = round(self.retry_after(), 3)
        if self._check is not None:
            out["checking"] = True  # a run of failures from too few callers: the upstream is being asked
        if self.forgiven:
            out["forgiven"] = self.forgiven
        return out
