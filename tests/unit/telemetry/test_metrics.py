"""The metrics without a server: bounded labels, what the observer records per kind of ending, the scrape-time
collector's sections, and the settings that switch /metrics."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Optional

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from unimodel.config import Settings
from unimodel.compose import build_engines, build_resilience, key_names
from unimodel.gateway.keys import plain_key_name
from unimodel.protocol.events import Usage
from unimodel.formats.reasoning import AppliedReasoning
from unimodel.service.context import RequestContext
from unimodel.telemetry.metrics import (
    OTHER,
    OTHER_ERROR,
    LabelBounds,
    Metrics,
    MetricsObserver,
    known_error_codes,
)
from unimodel.telemetry.metrics_gauges import ServingCollector

SOURCE = Path(__file__).resolve().parents[3] / "unimodel"


def bounds(models: Optional[list[str]] = None, clock: Any = None) -> LabelBounds:
    served = models if models is not None else ["m"]
    kwargs = {"clock": clock} if clock is not None else {}
    return LabelBounds(routes=["default", "hard"], keys=["anonymous", "key-1"], models=lambda: list(served),
                       **kwargs)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples(registry).items() if n == name and labels.items() <= dict(ls).items())


def finished(status: int = 200, error: Optional[str] = None, usage: Optional[Usage] = Usage(10, 20, 5),
             first_after: Optional[float] = 0.5, took: float = 2.0, **fields: Any) -> RequestContext:
    ctx = RequestContext("r", key_name="key-1", route="default", model="m", status=status, error_type=error,
                         usage=usage, reasoning=AppliedReasoning("high", "high", None), received_at=100.0,
                         **fields)
    ctx.first_token_at = None if first_after is None else 100.0 + first_after
    ctx.finished_at = 100.0 + took
    return ctx


def test_label_values_outside_the_configuration_become_other() -> None:
    b = bounds()
    assert (b.route("hard"), b.route("made-up"), b.route(None)) == ("hard", OTHER, "")
    assert (b.key("key-1"), b.key("key-9")) == ("key-1", OTHER)
    assert (b.effort("medium"), b.effort("turbo")) == ("medium", OTHER)
    assert (b.error_type("rate_limit_exceeded"), b.error_type("400"), b.error_type(None)) == \
        ("rate_limit_exceeded", OTHER_ERROR, "")
    assert (b.status(429), b.status(0)) == ("429", OTHER)
    assert (b.model("m"), b.model("gpt-made-up"), b.model(None)) == ("m", OTHER, "")


def test_a_model_discovered_later_is_asked_for_at_most_every_refresh() -> None:
    now = [0.0]
    served: list[str] = []
    b = bounds(served, clock=lambda: now[0])
    assert b.model("late") == OTHER
    served.append("late")
    now[0] = 1.0
    assert b.model("late") == OTHER  # within refresh_s of the last ask
    now[0] = 6.0
    assert b.model("late") == "late"


def test_every_error_code_the_code_sets_is_a_known_label() -> None:
    # code = "x", code: str = "x" and code="x" anywhere in the package
    literal = re.compile(r"""\bcode\s*(?::\s*str\s*)?=\s*["']([a-z_]+)["']""")
    found = {code for path in SOURCE.rglob("*.py") for code in literal.findall(path.read_text(encoding="utf-8"))}
    assert {"internal_error", "rate_limit_exceeded", "circuit_open", "route_not_found", "client_closed"} <= found
    assert found - known_error_codes() == set()


def test_a_success_records_tokens_latencies_and_one_request() -> None:
    registry = CollectorRegistry()
    observer = MetricsObserver(registry, bounds())
    observer.request_finished(finished())
    ours = {"key_name": "key-1", "route": "default", "model": "m", "reasoning_effort": "high"}
    assert value(registry, "unimodel_requests_total", **ours, status="200", error_type="") == 1
    assert [value(registry, "unimodel_tokens_total", **ours, token_type=t) for t in ("prompt", "reasoning",
                                                                                        "answer")] == [10, 5, 15]
    assert value(registry, "gen_ai_server_time_to_first_token_seconds_sum") == pytest.approx(0.5)
    assert value(registry, "gen_ai_server_request_duration_seconds_sum", error_type="") == pytest.approx(2.0)
    assert value(registry, "gen_ai_server_time_per_output_token_seconds_sum") == pytest.approx(1.5 / 19)
    assert value(registry, "gen_ai_server_time_to_first_token_seconds_bucket", le="0.64") == 1
    assert value(registry, "gen_ai_server_time_to_first_token_seconds_bucket", le="0.32") == 0
    assert value(registry, "gen_ai_client_token_usage_sum", gen_ai_token_type="output") == 20


def test_failures_refusals_and_replays() -> None:
    registry = CollectorRegistry()
    observer = MetricsObserver(registry, bounds())
    observer.request_finished(finished(502, "upstream_error", usage=Usage(10, 3), first_after=0.2))  # mid-stream
    observer.request_finished(finished(429, "rate_limit_exceeded", usage=None, first_after=None, limits="refused"))
    observer.request_finished(finished(429, "rate_limit_exceeded", usage=None, first_after=None))  # an upstream's
    observer.request_finished(finished(idempotency="replayed", first_after=0.001))
    assert value(registry, "unimodel_requests_total", status="502", error_type="upstream_error") == 1
    assert value(registry, "unimodel_requests_total", status="429") == 2
    assert value(registry, "unimodel_rate_limit_rejections_total", key_name="key-1", route="default") == 1
    assert value(registry, "unimodel_requests_total", status="200") == 1  # the replay is a request...
    assert value(registry, "unimodel_tokens_total", token_type="prompt") == 10  # ...with no tokens: the 502's only
    assert value(registry, "gen_ai_server_time_to_first_token_seconds_count") == 0  # no success made a token
    assert value(registry, "gen_ai_server_request_duration_seconds_count") == 4


def test_a_refusal_adds_no_series_of_zeros() -> None:
    registry = CollectorRegistry()
    MetricsObserver(registry, bounds()).request_finished(finished(401, "invalid_api_key", usage=None,
                                                                  first_after=None))
    names = {name for name, _ in samples(registry)}
    assert "unimodel_requests_total" in names and "gen_ai_server_request_duration_seconds_count" in names
    assert not names & {"unimodel_tokens_total", "gen_ai_client_token_usage_count",
                        "gen_ai_server_time_to_first_token_seconds_count", "unimodel_rate_limit_rejections_total"}


class _Engine:
    kind = "upstream"

    def __init__(self, ready: bool = True) -> None:
        self.ready = ready

    def is_ready(self) -> bool:
        if self.ready is None:
            raise RuntimeError("broken")
        return self.ready


def test_the_collector_reads_the_stages_and_survives_a_broken_section(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(engine="upstream", upstream="http://127.0.0.1:9/v1", breaker_failures=1, breaker_min_callers=1)
    resilience = build_resilience(settings, build_engines(settings))
    permit = resilience.pool.primary.breaker.allow()
    assert permit is not None
    resilience.pool.primary.breaker.failure(permit)  # one failure opens it
    metrics = Metrics(bounds(), process=False)
    engine = _Engine()
    metrics.watch(ServingCollector(in_flight=lambda: 3, engine=engine, stages=[resilience]))  # type: ignore[arg-type]
    r = metrics.registry
    assert value(r, "unimodel_requests_in_flight") == 3
    assert value(r, "unimodel_upstream_breaker_state", upstream="primary", state="open") == 1
    assert value(r, "unimodel_upstream_breaker_opened_total", upstream="primary") == 1
    assert value(r, "unimodel_upstream_up", upstream="primary") == 1
    assert not any(name.startswith("process_") for name, _ in samples(r))  # only when asked for
    engine.ready = None  # type: ignore[assignment]
    caplog.set_level(logging.ERROR, "unimodel.metrics")
    for _ in range(2):
        assert value(r, "unimodel_requests_in_flight") == 3  # the engine's and upstreams' sections are left out
        assert value(r, "unimodel_engine_ready") == 0
    assert len([rec for rec in caplog.records if "engine failed" in rec.getMessage()]) == 1  # once, not per scrape


def test_render_negotiates_openmetrics() -> None:
    metrics = Metrics(bounds())
    text, kind = metrics.render("")
    assert kind.startswith("text/plain") and b"process_resident_memory_bytes" in text
    body, kind = metrics.render("application/openmetrics-text; version=1.0.0")
    assert kind.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")


def test_settings_switch_and_protect_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().metrics is True and Settings().metrics_key is None
    monkeypatch.setenv("UNIMODEL_METRICS_KEY", "from-env")
    loaded = Settings.load(metrics=False)
    assert loaded.metrics is False and loaded.metrics_key is not None
    assert loaded.metrics_key.get_secret_value() == "from-env" and "from-env" not in repr(loaded)
    assert key_names(Settings(api_keys=["a", "b", "a"])) == ["anonymous", plain_key_name("a"), plain_key_name("b")]


def test_asyncio_tasks_are_counted_on_the_loop_and_left_out_off_it() -> None:
    import asyncio

    metrics = Metrics(bounds(), process=False)
    metrics.watch(ServingCollector(in_flight=lambda: 0, engine=_Engine()))  # type: ignore[arg-type]
    assert not any(name == "unimodel_asyncio_tasks" for name, _ in samples(metrics.registry))  # no running loop

    async def scrape_with_sleepers() -> tuple[float, float]:
        before = value(metrics.registry, "unimodel_asyncio_tasks")
        sleepers = [asyncio.create_task(asyncio.sleep(10)) for _ in range(3)]
        during = value(metrics.registry, "unimodel_asyncio_tasks")
        for task in sleepers:
            task.cancel()
        await asyncio.gather(*sleepers, return_exceptions=True)
        return before, during

    before, during = asyncio.run(asyncio.wait_for(scrape_with_sleepers(), 10))
    assert before >= 1 and during == before + 3
