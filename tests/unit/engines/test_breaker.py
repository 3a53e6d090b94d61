"""The circuit breaker's state machine, on an injected clock."""

from __future__ import annotations

import pytest

from unimodel.engines.breaker import NO_PROBE, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, failures: int = 3, window_s: float = 10.0, cooldown_s: float = 5.0) -> CircuitBreaker:
    return CircuitBreaker("primary", failures=failures, window_s=window_s, cooldown_s=cooldown_s, clock=clock)


def fail(b: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        permit = b.allow()
        assert permit is not None
        b.failure(permit)


def test_opens_after_n_failures_in_a_row_within_the_window() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 2)
    assert b.state == "closed" and b.snapshot()["failures"] == 2
    fail(b, 1)
    assert b.state == "open" and b.allow() is None
    assert b.retry_after() == pytest.approx(5.0)
    clock.now += 2
    assert b.retry_after() == pytest.approx(3.0)
    assert b.snapshot() == {"breaker": "open", "failures": 0, "opened": 1, "retry_in_s": 3.0}


def test_a_success_starts_the_count_again() -> None:
    b = breaker(Clock())
    fail(b, 2)
    b.success(NO_PROBE)
    fail(b, 2)
    assert b.state == "closed"
    fail(b, 1)
    assert b.state == "open"


def test_failures_older_than_the_window_do_not_count() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 2)
    clock.now += 10.5
    fail(b, 2)
    assert b.state == "closed"
    fail(b, 1)
    assert b.state == "open"


def test_half_open_after_the_cooldown_lets_exactly_one_probe_through_and_closes_on_its_success() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 4.9
    assert b.allow() is None
    clock.now += 0.1
    assert b.state == "half-open" and b.retry_after() == 0.0
    probe = b.allow()
    assert probe is not None and probe.probe
    assert b.allow() is None  # one probe at a time
    assert b.retry_after() > 0
    b.success(probe)
    assert b.state == "closed"
    assert b.allow() is NO_PROBE


def test_a_failed_probe_opens_the_circuit_for_a_new_cooldown() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 5
    probe = b.allow()
    assert probe is not None
    b.failure(probe)
    assert b.state == "open" and b.opened == 2
    assert b.retry_after() == pytest.approx(5.0)
    clock.now += 5
    assert b.state == "half-open"


def test_a_probe_without_verdict_frees_the_slot_for_the_next_request() -> None:
    clock = Clock()
    b = breaker(clock)
    fail(b, 3)
    clock.now += 5
    probe = b.allow()
    assert probe is not None and b.allow() is None
    b.release(probe)  # its client left
    assert b.state == "half-open"
    again = b.allow()
    assert again is not None and again.probe


def test_late_verdicts_of_requests_let_in_before_the_circuit_opened_change_nothing() -> None:
    clock = Clock()
    b = breaker(clock)
    early = b.allow()
    assert early is not None
    fail(b, 3)
    b.success(early)  # a slow request that started while closed: does not close an open circuit
    assert b.state == "open"
    b.failure(early)
    assert b.opened == 1
    clock.now += 5
    assert b.state == "half-open"
    b.success(NO_PROBE)  # only the probe decides in half-open
    assert b.state == "half-open"


def test_disabled_breaker_lets_everything_through() -> None:
    b = breaker(Clock(), failures=0)
    fail(b, 100)
    assert b.allow() is NO_PROBE and b.state == "closed"
    assert b.snapshot() == {"breaker": "disabled"}


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("x", failures=-1)
    with pytest.raises(ValueError):
        CircuitBreaker("x", cooldown_s=0)
