"""The dashboard's JSON: totals that agree with the series drawn, whatever the bucket width."""

from __future__ import annotations

import json

import pytest

from tests.unit.telemetry.window_support import Clock, finished
from unimodel.telemetry.alert_rules import AlertRule
from unimodel.telemetry.alerts import Alerts
from unimodel.telemetry.dashboard_data import dashboard_data
from unimodel.telemetry.window import RequestWindow


@pytest.mark.parametrize("horizon_s, window_s", [(3600, 900), (7300, 900), (7300, 3600), (3600, 7)])
def test_totals_cover_exactly_the_steps_of_the_series(horizon_s: float, window_s: float) -> None:
    clock = Clock()
    window = RequestWindow(horizon_s, clock=clock)
    for second in range(int(horizon_s)):
        window.request_finished(finished(latency_ms=100 + second % 50))
        clock.advance(1)
    data = dashboard_data(window, None, window_s)
    assert data["step_s"] % window.bucket_s == 0
    assert data["window_s"] == len(data["series"]["requests"]) * data["step_s"] >= min(window_s, horizon_s)
    assert data["totals"]["requests"] == sum(data["series"]["requests"])
    assert data["totals"]["latency_ms"]["count"] == data["totals"]["requests"]
    assert 100 <= data["totals"]["latency_ms"]["p50"] <= 160
    json.dumps(data, allow_nan=False)  # plain JSON, no NaN or Infinity


def test_alerts_firing_and_recent_events_are_listed() -> None:
    clock = Clock()
    window = RequestWindow(3600, clock=clock)
    alerts = Alerts([AlertRule(name="spike", kind="token_spike", window_s=60, baseline_window_s=60, threshold=2,
                               min_requests=1)], window)
    clock.advance(120)
    window.request_finished(finished(prompt=1000))  # after a silent baseline: an infinite factor
    alerts.evaluate()
    data = dashboard_data(window, alerts, 300)
    (firing,) = data["alerts"]["firing"]
    assert firing["alert"] == "spike" and firing["value"] is None  # infinite: shown as unknown, valid JSON
    assert data["alerts"]["recent"][0]["state"] == "firing" and data["alerts"]["rules"] == 1
    json.dumps(data, allow_nan=False)
