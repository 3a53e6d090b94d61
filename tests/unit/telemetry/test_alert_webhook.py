"""Alert webhooks against a real local receiver: retried with backoff, given up on, bounded, never blocking."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.support.webhook_receiver import WebhookReceiver
from unimodel.telemetry.alert_webhook import WebhookSender

EVENT = {"alert": "errors", "kind": "error_rate", "state": "firing", "value": 0.5}


async def wait_until(predicate, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_failing_then_succeeding_receiver_gets_the_event_after_retries() -> None:
    with WebhookReceiver(fail_first=2, fail_status=503) as receiver:
        sender = WebhookSender(timeout_s=2, retries=3, backoff_s=0.05)
        await sender.start()
        try:
            started = time.monotonic()
            assert sender.submit(receiver.url, EVENT)
            await wait_until(lambda: sender.delivered == 1)
            took = time.monotonic() - started
        finally:
            await sender.aclose()
    assert receiver.attempts == 3 and receiver.bodies == [EVENT]
    assert sender.attempts == 3 and sender.failed == 0
    assert took >= 0.05 + 0.1  # waited between the tries: 0.05 s, then 0.1 s


async def test_a_receiver_that_keeps_failing_is_given_up_on(caplog: pytest.LogCaptureFixture) -> None:
    with WebhookReceiver(fail_first=100, fail_status=500) as receiver:
        sender = WebhookSender(timeout_s=2, retries=2, backoff_s=0.01)
        await sender.start()
        try:
            sender.submit(receiver.url, EVENT)
            await wait_until(lambda: sender.failed == 1)
        finally:
            await sender.aclose()
    assert receiver.attempts == 3 and receiver.bodies == []
    assert "alert_webhook=failed alert=errors state=firing tries=3 reason=status_500" in caplog.text
    assert "s3cret" not in caplog.text  # the URL (and its token) is never logged


async def test_a_client_error_is_not_retried() -> None:
    with WebhookReceiver(fail_first=100, fail_status=404) as receiver:
        sender = WebhookSender(timeout_s=2, retries=3, backoff_s=0.01)
        await sender.start()
        try:
            sender.submit(receiver.url, EVENT)
            await wait_until(lambda: sender.failed == 1)
        finally:
            await sender.aclose()
    assert receiver.attempts == 1


async def test_a_hanging_receiver_never_blocks_and_the_queue_stays_bounded(
        caplog: pytest.LogCaptureFixture) -> None:
    with WebhookReceiver(hang=True) as receiver:
        sender = WebhookSender(timeout_s=0.3, retries=1, backoff_s=0.01, max_queue=3)
        await sender.start()
        try:
            assert sender.submit(receiver.url, {**EVENT, "n": 0})
            await wait_until(lambda: receiver.attempts >= 1)  # the worker is stuck on the first event
            started = time.monotonic()
            accepted = [sender.submit(receiver.url, {**EVENT, "n": i}) for i in range(1, 10)]
            assert time.monotonic() - started < 0.05  # submitting never waits on the network
            # three wait in the queue behind the stuck one, the rest were dropped
            assert accepted.count(True) == 3 and sender.dropped == 6 and sender.pending == 3
            tick = time.monotonic()
            await asyncio.sleep(0.05)  # the event loop is free while the receiver hangs
            assert time.monotonic() - tick < 0.5
            await wait_until(lambda: sender.failed >= 1, timeout_s=5)  # each try ends at its deadline
            assert sender.delivered == 0 and receiver.bodies == []
        finally:
            closing = time.monotonic()
            await sender.aclose()
            assert time.monotonic() - closing < 2
    assert caplog.text.count("reason=queue_full") == 1  # warned once, not once per drop
    assert "reason=TimeoutError" in caplog.text
