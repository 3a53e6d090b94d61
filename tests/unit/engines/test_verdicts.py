"""Which failures are retried, failed over, or raised; backoff with full jitter, every wait bounded."""

from __future__ import annotations

import random

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from unimodel.errors import (
    CircuitOpenError,
    ContextLengthExceededError,
    InvalidRequestError,
    OverloadedError,
    RateLimitError,
    ServiceUnavailableError,
    UnimodelError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from unimodel.engines.verdicts import Backoff, Verdict, classify


def caused(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(("exc", "verdict"), [
    (UpstreamConnectionError("cannot connect"), Verdict.RETRY),
    (UpstreamStatusError("bad gateway", upstream_status=502), Verdict.RETRY),
    (UpstreamStatusError("unavailable", upstream_status=503), Verdict.RETRY),
    (UpstreamStatusError("gateway timeout", upstream_status=504), Verdict.RETRY),
    (UpstreamStatusError("internal", upstream_status=500), Verdict.FAILOVER),
    (UpstreamStatusError("context too long", upstream_status=400), Verdict.CLIENT),
    (UpstreamStatusError("no such model", upstream_status=404), Verdict.CLIENT),
    (UpstreamStatusError("too large", upstream_status=413), Verdict.CLIENT),
    (RateLimitError("slow down", retry_after=1), Verdict.THROTTLED),
    (OverloadedError("queue full", retry_after=1), Verdict.THROTTLED),
    (ServiceUnavailableError("not ready", retry_after=1), Verdict.THROTTLED),  # our engine knows it is starting: not the breaker's
    (CircuitOpenError("open", retry_after=3), Verdict.RETRY),
    # connect or pool wait timed out: retry; a read timed out: the next upstream
    (caused(UpstreamTimeoutError("timed out"), aiohttp.ConnectionTimeoutError("c")), Verdict.RETRY),
    (caused(UpstreamTimeoutError("timed out"), aiohttp.SocketTimeoutError("r")), Verdict.FAILOVER),
    (UpstreamTimeoutError("no first token in time"), Verdict.FAILOVER),
    (caused(UpstreamError("connection failed"), aiohttp.ServerDisconnectedError()), Verdict.RETRY),
    (caused(UpstreamError("connection failed"), aiohttp.ClientOSError(104, "reset")), Verdict.RETRY),
    (caused(UpstreamError("connection failed"), aiohttp.ClientConnectionResetError("closing")), Verdict.RETRY),
    (caused(UpstreamError("connection failed"), aiohttp.ClientPayloadError("cut")), Verdict.RETRY),
    (caused(UpstreamError("connection failed"),  # an answer that is not HTTP
            aiohttp.ClientResponseError(None, (), message="bad status line")), Verdict.RETRY),  # type: ignore[arg-type]
    (caused(UpstreamError("connection failed"), aiohttp.ServerFingerprintMismatch(b"a", b"b", "up", 443)),
     Verdict.FAILOVER),
    (UpstreamError("the upstream refused the gateway's credentials"), Verdict.FAILOVER),
    (UpstreamError("malformed stream frame"), Verdict.FAILOVER),
    (InvalidRequestError("bad", param="messages"), Verdict.CLIENT),
    (ContextLengthExceededError("too long"), Verdict.CLIENT),
    (UnimodelError("engine internal error"), Verdict.FAILOVER),
    (RuntimeError("CUDA error"), Verdict.FAILOVER),
])
def test_classify(exc: BaseException, verdict: Verdict) -> None:
    assert classify(exc) is verdict


def test_verdict_properties() -> None:
    assert [v for v in Verdict if v.may_retry] == [Verdict.RETRY, Verdict.THROTTLED]
    assert [v for v in Verdict if v.counts_as_failure] == [Verdict.RETRY, Verdict.FAILOVER]


@given(base=st.floats(0, 10), cap=st.floats(0, 60), attempt=st.integers(1, 10_000), seed=st.integers(0, 2**32))
def test_every_wait_is_between_zero_and_the_capped_exponential(base: float, cap: float, attempt: int,
                                                               seed: int) -> None:
    backoff = Backoff(base, cap, random.Random(seed))
    wait = backoff.wait(attempt)
    assert 0.0 <= wait <= backoff.ceiling(attempt) <= cap
    if attempt <= 60:
        assert backoff.ceiling(attempt) == min(cap, base * 2 ** (attempt - 1))


def test_the_ceiling_doubles_up_to_the_cap_and_the_jitter_is_full() -> None:
    backoff = Backoff(0.1, 1.0, random.Random(7))
    assert [backoff.ceiling(k) for k in range(0, 6)] == [0.0, 0.1, 0.2, 0.4, 0.8, 1.0]
    waits = [backoff.wait(4) for _ in range(2000)]
    assert max(waits) <= 0.8 and min(waits) >= 0.0
    # full jitter: spread over the whole range, not bunched near the ceiling
    assert sum(w < 0.2 for w in waits) > 300 and sum(w > 0.6 for w in waits) > 300


def test_retry_after_is_honoured_when_short_enough_else_not_waited_for() -> None:
    backoff = Backoff(0.1, 5.0, random.Random(1))
    assert backoff.wait_for(RateLimitError("slow", retry_after=2.5), 1) == 2.5
    assert backoff.wait_for(RateLimitError("slow", retry_after=60), 1) is None
    assert 0.0 <= (backoff.wait_for(RateLimitError("slow"), 3) or 0.0) <= 0.4
    assert 0.0 <= (backoff.wait_for(UpstreamConnectionError("no"), 1) or 0.0) <= 0.1


def test_negative_backoff_is_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(-1, 1)
