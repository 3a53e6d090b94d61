"""The rolling window: counts per time range, percentiles from merged histograms, bounded memory."""

from __future__ import annotations

import random

import pytest

from tests.unit.telemetry.window_support import Clock, finished
from unimodel.telemetry import histogram
from unimodel.telemetry.window import NO_EFFORT, NO_KEY, NO_ROUTE, OTHER, RequestWindow


def test_histogram_percentiles_are_within_five_percent() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(6, 1.2) for _ in range(5000)]
    hist: histogram.Histogram = {}
    for v in values:
        histogram.add(hist, v)
    ordered = sorted(values)
    for p in (50, 90, 95, 99):
        exact = ordered[int(len(ordered) * p / 100) - 1]
        assert histogram.percentile(hist, p) == pytest.approx(exact, rel=0.05)
    assert histogram.count(hist) == 5000
    assert histogram.percentile({}, 50) is None
    zeros: histogram.Histogram = {}
    histogram.add(zeros, 0)
    assert histogram.percentile(zeros, 99) == 0.0


def test_merging_histograms_equals_one_histogram_of_everything() -> None:
    a: histogram.Histogram = {}
    b: histogram.Histogram = {}
    both: histogram.Histogram = {}
    for i, v in enumerate(range(1, 2000, 7)):
        histogram.add(a if i % 2 else b, v)
        histogram.add(both, v)
    assert histogram.merged([a, b]) == both


def test_views_count_the_requests_of_their_time_range_only() -> None:
    clock = Clock()
    window = RequestWindow(600, clock=clock)
    clock.advance(100)
    window.request_finished(finished())
    clock.advance(30)
    window.request_finished(finished())
    window.request_finished(finished(status=503, error_type="upstream_error", latency_ms=900, ttft_ms=None))
    clock.advance(5)
    assert window.view(10).requests == 2
    assert window.view(60).requests == 3
    assert window.view(60).server_errors == 1
    assert window.view(60).error_rate == pytest.approx(1 / 3)
    # the range before the last 10 s: only the first request
    assert window.view(60, ending_s_ago=10).requests == 1
    clock.advance(600)
    assert window.view(600).requests == 0
    assert len(window) == 0  # dropped once past the horizon


def test_latency_and_ttft_count_answered_requests_only() -> None:
    clock = Clock()
    window = RequestWindow(60, clock=clock)
    for ms in range(10, 1010, 10):  # 100 answered requests: 10 ms … 1000 ms
        window.request_finished(finished(latency_ms=ms, ttft_ms=ms / 10))
    window.request_finished(finished(status=401, error_type="invalid_api_key", latency_ms=0.5, ttft_ms=None))
    window.request_finished(finished(status=504, error_type="upstream_timeout", latency_ms=60_000, ttft_ms=None))
    view = window.view(60)
    assert view.requests == 102
    assert view.percentile("latency_ms", 50) == pytest.approx(500, rel=0.05)
    assert view.percentile("latency_ms", 95) == pytest.approx(950, rel=0.05)
    assert view.percentile("ttft_ms", 95) == pytest.approx(95, rel=0.05)
    assert histogram.count(view.histogram("latency_ms")) == 100


def test_tokens_by_effort_split_prompt_reasoning_and_answer() -> None:
    window = RequestWindow(60, clock=Clock())
    window.request_finished(finished(effort="high", prompt=100, completion=50, reasoning=30))
    window.request_finished(finished(effort="high", prompt=10, completion=5, reasoning=5))
    window.request_finished(finished(effort="none", prompt=7, completion=3))
    window.request_finished(finished(status=400, error_type="invalid_value", effort=None, prompt=None))
    view = window.view(60)
    assert view.tokens_by_effort() == {
        "high": {"requests": 2, "prompt": 110, "reasoning": 35, "answer": 20},
        "none": {"requests": 1, "prompt": 7, "reasoning": 0, "answer": 3},
        NO_EFFORT: {"requests": 1, "prompt": 0, "reasoning": 0, "answer": 0},
    }
    assert view.tokens == 110 + 55 + 10
    assert view.percentile("prompt_tokens", 100) == pytest.approx(100, rel=0.05)


def test_errors_routes_keys_and_rate_limit_rejections() -> None:
    window = RequestWindow(60, clock=Clock())
    window.request_finished(finished(key="a", route="hard"))
    window.request_finished(finished(key="a", status=429, error_type="rate_limit_exceeded", prompt=None))
    window.request_finished(finished(key="a", status=429, error_type="rate_limit_exceeded", prompt=None))
    window.request_finished(finished(key="b", status=429, error_type="upstream_error", prompt=None))  # not ours
    window.request_finished(finished(key=None, route=None, status=401, error_type="invalid_api_key", prompt=None))
    view = window.view(60)
    assert view.rate_limited == 2
    assert view.keys()["a"] == {"requests": 3, "server_errors": 0, "tokens": 15, "rate_limited": 2}
    assert view.keys()["b"]["rate_limited"] == 0
    assert view.keys()[NO_KEY]["requests"] == 1
    assert view.routes() == {"hard": 1, "default": 3, NO_ROUTE: 1}
    assert view.errors_by_type() == {"rate_limit_exceeded": 2, "upstream_error": 1, "invalid_api_key": 1}


def test_labels_per_bucket_are_bounded() -> None:
    window = RequestWindow(60, max_labels=3, clock=Clock())
    for i in range(10):
        window.request_finished(finished(key=f"key-{i}", route=f"route-{i}", error_type=f"e{i}", status=500))
    view = window.view(60)
    assert set(view.keys()) == {"key-0", "key-1", "key-2", OTHER}  # three named, the rest as one
    assert view.keys()[OTHER]["requests"] == 7
    assert view.routes()[OTHER] == 7 and len(view.routes()) == 4
    assert sum(view.errors_by_type().values()) == 10 and len(view.errors_by_type()) == 4


def test_memory_is_bounded_by_max_buckets_whatever_the_horizon() -> None:
    clock = Clock()
    window = RequestWindow(7200, max_buckets=100, clock=clock)
    assert window.bucket_s == 72
    for _ in range(10_000):
        window.request_finished(finished())
        clock.advance(3)
    assert len(window) <= 102
    assert window.view(7200).requests == pytest.approx(2400, abs=30)


def test_span_is_what_the_window_has_watched() -> None:
    clock = Clock()
    window = RequestWindow(3600, clock=clock)
    clock.advance(20)
    assert window.view(300).span_s == pytest.approx(20)
    assert window.view(300, ending_s_ago=60).span_s == 0
    clock.advance(1000)
    assert window.view(300).span_s == pytest.approx(300)
    assert window.view(300).per_minute(600) == pytest.approx(120)


def test_series_are_per_step_oldest_first() -> None:
    clock = Clock()
    window = RequestWindow(600, clock=clock)
    window.request_finished(finished())
    clock.advance(30)
    for _ in range(3):
        window.request_finished(finished(latency_ms=200))
    series = window.series(60, 10)
    assert [ago for ago, _ in series] == [50, 40, 30, 20, 10, 0]
    assert [view.requests for _, view in series] == [0, 0, 1, 0, 0, 3]
    assert series[-1][1].percentile("latency_ms", 50) == pytest.approx(200, rel=0.05)
