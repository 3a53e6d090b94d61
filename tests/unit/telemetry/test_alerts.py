"""Alert rules: validation, and every kind firing once and resolving once over a window with a moved clock."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from tests.unit.telemetry.window_support import Clock, finished
from unimodel.config import ConfigError, Settings
from unimodel.telemetry.alert_rules import AlertRule
from unimodel.telemetry.alert_webhook import WebhookSender
from unimodel.telemetry.alerts import Alerts
from unimodel.telemetry.window import RequestWindow


class RecordingSender(WebhookSender):
    """The real sender's queueing, without a worker: the test reads what would be posted."""

    def __init__(self) -> None:
        super().__init__(max_queue=10)
        self.posts: list[tuple[str, dict[str, Any]]] = []

    def submit(self, url: str, payload: dict[str, Any]) -> bool:
        self.posts.append((url, payload))
        return super().submit(url, payload)


def alerts_for(*rules: dict[str, Any], webhook: str | None = None) -> tuple[Alerts, RequestWindow, Clock]:
    clock = Clock()
    parsed = [AlertRule(**r) for r in rules]
    window = RequestWindow(max([3600.0, *(r.reach_s for r in parsed)]), clock=clock)
    return Alerts(parsed, window, default_webhook=webhook, sender=RecordingSender()), window, clock


def states(alerts: Alerts) -> list[tuple[str, str, Any]]:
    return [(e.rule, e.state, e.key) for e in alerts.events]


def feed(alerts: Alerts, window: RequestWindow, n: int, **kwargs: Any) -> None:
    for _ in range(n):
        ctx = finished(**kwargs)
        window.request_finished(ctx)
        alerts.request_finished(ctx)


# ---- validation ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rule, message", [
    ({"name": "x", "kind": "error_rate", "threshold": 2}, "share"),
    ({"name": "x", "kind": "p95_latency", "threshold": 100, "key": "a"}, "takes no key"),
    ({"name": "x", "kind": "error_rate", "threshold": 0.1, "baseline_window_s": 60}, "token_spike rules only"),
    ({"name": "x", "kind": "error_rate", "threshold": 0.1, "resolve_threshold": 0.2}, "must not exceed"),
    ({"name": "x y", "kind": "error_rate", "threshold": 0.1}, "alert name"),
    ({"name": "x", "kind": "error_rate", "threshold": 0.1, "webhook": "file:///etc/passwd"}, "http"),
    ({"name": "x", "kind": "cpu", "threshold": 1}, "kind"),
    ({"name": "x", "kind": "error_rate", "threshold": 0.1, "surprise": 1}, "surprise"),
])
def test_bad_rules_are_refused_with_a_reason(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.load(alerts=[rule])


def test_rules_load_from_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "unimodel.yaml"
    config.write_text(
        "alert-webhook-url: https://hooks.example.test/unimodel\n"
        "alert-eval-interval-s: 2\n"
        "alerts:\n"
        "  - {name: spike, kind: token_spike, window_s: 60, threshold: 3}\n"
        "  - {name: long-prompts, kind: prompt_length, threshold: 30000, key: team-a, webhook: http://10.0.0.5/h}\n")
    settings = Settings.load(config)
    spike, prompts = settings.alerts
    assert spike.baseline_window_s == 3600 and spike.fewest_requests == 10 and spike.reach_s == 3660
    assert prompts.key == "team-a" and prompts.fewest_requests == 1
    assert settings.alert_webhook_url == "https://hooks.example.test/unimodel"
    assert settings.alert_eval_interval_s == 2
    with pytest.raises(ConfigError, match="two alert rules are named 'a'"):
        Settings.load(alerts=[{"name": "a", "kind": "error_rate", "threshold": 0.5}] * 2)
    with pytest.raises(ConfigError, match="alert_webhook_url"):
        Settings.load(alert_webhook_url="ftp://x")


# ---- each kind fires once and resolves once ------------------------------------------------------------------

def test_error_rate_fires_once_and_resolves_once(caplog: pytest.LogCaptureFixture) -> None:
    alerts, window, clock = alerts_for({"name": "errors", "kind": "error_rate", "window_s": 60, "threshold": 0.2,
                                        "min_requests": 5}, webhook="http://127.0.0.1:9/hook")
    feed(alerts, window, 3, status=503, error_type="upstream_error", user="jane.doe@example.org")
    alerts.evaluate()
    assert alerts.events == []  # 3 requests: fewer than min_requests, no judgement
    feed(alerts, window, 5)
    with caplog.at_level(logging.INFO, logger="unimodel.alerts"):
        alerts.evaluate()
        feed(alerts, window, 2, status=500, error_type="internal_error")
        alerts.evaluate()  # still firing: no second event
        clock.advance(61)
        feed(alerts, window, 10)
        alerts.evaluate()
        alerts.evaluate()
    assert states(alerts) == [("errors", "firing", None), ("errors", "resolved", None)]
    firing, resolved = alerts.events
    assert firing.value == pytest.approx(3 / 8) and firing.details == {"requests": 8, "server_errors": 3}
    assert resolved.value == 0
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("alert=errors kind=error_rate state=firing key=- value=0.375 threshold=0.2 "
                               "window_s=60.0")
    assert caplog.records[0].levelno == logging.WARNING and "state=resolved" in lines[1]
    assert not any("example.org" in line for line in lines)  # no user, prompt or key in an alert
    posts = alerts.sender.posts  # type: ignore[attr-defined]
    assert [p["state"] for _, p in posts] == ["firing", "resolved"]
    assert posts[0][1]["alert"] == "errors" and posts[0][1]["source"] == "unimodel" and "at" in posts[0][1]
    assert alerts.firing() == []


def test_p95_latency_fires_and_resolves_with_a_hysteresis_band() -> None:
    alerts, window, clock = alerts_for({"name": "slow", "kind": "p95_latency", "window_s": 30, "threshold": 1000,
                                        "resolve_threshold": 500, "min_requests": 10})
    feed(alerts, window, 20, latency_ms=2000)
    alerts.evaluate()
    assert states(alerts) == [("slow", "firing", None)]
    assert alerts.events[0].value == pytest.approx(2000, rel=0.05)
    clock.advance(31)
    feed(alerts, window, 20, latency_ms=800)  # under the threshold, above the resolve threshold: still firing
    alerts.evaluate()
    assert len(alerts.events) == 1 and alerts.firing()[0]["value"] == pytest.approx(800, rel=0.05)
    clock.advance(31)
    feed(alerts, window, 20, latency_ms=300)
    alerts.evaluate()
    assert states(alerts) == [("slow", "firing", None), ("slow", "resolved", None)]


def test_token_spike_needs_a_whole_baseline_then_fires_on_the_ratio() -> None:
    alerts, window, clock = alerts_for({"name": "spike", "kind": "token_spike", "window_s": 60, "threshold": 3,
                                        "baseline_window_s": 600, "min_requests": 5})
    for _ in range(60):  # 10 minutes at 6 requests of 15 tokens a minute: 90 tokens per minute
        feed(alerts, window, 1, prompt=10, completion=5)
        clock.advance(10)
        alerts.evaluate()
    assert alerts.events == []
    for _ in range(6):  # one minute at ten times the rate
        feed(alerts, window, 10, prompt=10, completion=5)
        clock.advance(10)
        alerts.evaluate()
    assert states(alerts) == [("spike", "firing", None)]
    event = alerts.events[0]
    assert event.value > 3
    assert event.details["tokens_per_minute"] > 3 * event.details["baseline_tokens_per_minute"] > 0
    for _ in range(12):  # two quiet-ish minutes at the old rate
        feed(alerts, window, 1, prompt=10, completion=5)
        clock.advance(10)
        alerts.evaluate()
    assert states(alerts) == [("spike", "firing", None), ("spike", "resolved", None)]


def test_token_spike_waits_for_a_watched_baseline() -> None:
    alerts, window, clock = alerts_for({"name": "spike", "kind": "token_spike", "window_s": 60, "threshold": 2,
                                        "baseline_window_s": 600, "min_requests": 1})
    clock.advance(120)
    feed(alerts, window, 50, prompt=1000)
    alerts.evaluate()  # only 60 s of baseline watched: no judgement yet
    assert alerts.events == []


def test_prompt_length_fires_on_the_request_and_resolves_after_a_quiet_window(
        caplog: pytest.LogCaptureFixture) -> None:
    alerts, window, clock = alerts_for({"name": "long", "kind": "prompt_length", "threshold": 1000,
                                        "window_s": 60, "key": "team-a"})
    with caplog.at_level(logging.INFO, logger="unimodel.alerts"):
        feed(alerts, window, 1, prompt=5000, key="team-b")  # another key: not this rule's
        feed(alerts, window, 1, prompt=1000)  # not over
        assert alerts.events == []
        feed(alerts, window, 1, prompt=2000)  # fires at once, without an evaluation
        assert states(alerts) == [("long", "firing", None)]
        for _ in range(50):  # more long prompts: counted, not logged again
            feed(alerts, window, 1, prompt=3000)
        clock.advance(30)
        alerts.evaluate()
        assert len(alerts.events) == 1 and alerts.firing()[0]["requests_over"] == 51
        clock.advance(61)
        alerts.evaluate()
    assert states(alerts) == [("long", "firing", None), ("long", "resolved", None)]
    assert alerts.events[0].details == {"key_name": "team-a"} and alerts.events[0].value == 2000
    assert alerts.events[1].details["requests_over"] == 51 and alerts.events[1].details["largest"] == 3000
    assert len(caplog.records) == 2


def test_rate_limit_rejections_alert_per_key() -> None:
    alerts, window, clock = alerts_for({"name": "limited", "kind": "rate_limit_rejections", "window_s": 60,
                                        "threshold": 3})
    limited = {"status": 429, "error_type": "rate_limit_exceeded", "prompt": None}
    feed(alerts, window, 5, key="a", **limited)
    feed(alerts, window, 1, key="b", **limited)
    alerts.evaluate()
    assert states(alerts) == [("limited", "firing", "a")]
    clock.advance(10)
    feed(alerts, window, 4, key="b", **limited)
    alerts.evaluate()
    assert states(alerts)[1:] == [("limited", "firing", "b")]
    assert {a["key"] for a in alerts.firing()} == {"a", "b"}
    clock.advance(61)
    alerts.evaluate()
    assert sorted(states(alerts)[2:]) == [("limited", "resolved", "a"), ("limited", "resolved", "b")]
    alerts.evaluate()
    assert len(alerts.events) == 4


def test_rate_limit_rejections_for_one_key() -> None:
    alerts, window, _ = alerts_for({"name": "a-limited", "kind": "rate_limit_rejections", "window_s": 60,
                                    "threshold": 0, "key": "a"})
    feed(alerts, window, 3, key="b", status=429, error_type="rate_limit_exceeded", prompt=None)
    alerts.evaluate()
    assert alerts.events == []
    feed(alerts, window, 1, key="a", status=429, error_type="rate_limit_exceeded", prompt=None)
    alerts.evaluate()
    assert states(alerts) == [("a-limited", "firing", "a")]


async def test_the_evaluator_task_runs_every_interval_and_survives_a_failure(
        caplog: pytest.LogCaptureFixture) -> None:
    alerts, window, _ = alerts_for({"name": "errors", "kind": "error_rate", "window_s": 60, "threshold": 0.1,
                                    "min_requests": 1})
    alerts.interval_s = 0.01
    calls = []
    evaluate = alerts.evaluate

    def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        evaluate()

    alerts.evaluate = flaky  # type: ignore[method-assign]
    feed(alerts, window, 2, status=500, error_type="internal_error")
    await alerts.start()
    try:
        for _ in range(500):
            if alerts.firing():
                break
            await asyncio.sleep(0.01)
    finally:
        await alerts.aclose()
    assert len(calls) >= 2 and alerts.firing()[0]["alert"] == "errors"
    assert "alert evaluation failed" in caplog.text
