"""Settings and flags → the resilience stage (built by the composition root): names, the primary's settings shared, validation, the last stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import unimodel.cli as cli
from unimodel.config import ConfigError, Settings
from unimodel.engines.upstream import UpstreamEngine
from unimodel.compose import build_engines, build_resilience, build_stages
from unimodel.gateway.resilience import ResilienceStage
from unimodel.service.pipeline import Pipeline


def resilience(settings: Settings) -> ResilienceStage:
    return build_resilience(settings, build_engines(settings, primary=_Primary()))


class _Primary:
    kind = "test"

    def models(self) -> list[Any]:
        return []

    async def check_health(self) -> bool:  # what the primary's breaker asks
        return True


def test_defaults_retry_twice_with_a_breaker_on_the_primary_only() -> None:
    stage = resilience(Settings())
    assert stage.upstream_names == ["primary"]
    assert stage.policy.retries == 2 and stage.policy.first_token_timeout_s is None
    assert stage.pool.primary.breaker.failures == 5 and stage.pool.canary_weight == 0.0
    assert stage.status() == {"upstreams": {"primary": {"breaker": "closed", "failures": 0, "opened": 0}},
                              "retries": 2}


def test_extra_upstreams_share_the_primarys_settings() -> None:
    s = Settings(engine="upstream", upstream="http://a/v1", model="up-model", served_model_name="served",
                 upstream_parse="upstream", model_family="think-tags", upstream_api_key="sk-up",
                 upstream_connect_timeout_s=2.5, fallback_upstreams=["http://b/v1/", "http://c/v1"],
                 canary_upstream="http://d/v1", canary_weight=0.25, retries=3, breaker_failures=7,
                 upstreams={"big": {"url": "http://e/v1", "api_key": "sk-big"}})
    stage = resilience(s)
    assert stage.upstream_names == ["primary", "fallback-1", "fallback-2", "canary", "big"]
    fb = stage.pool.by_name["fallback-1"].engine
    assert isinstance(fb, UpstreamEngine) and fb.base_url == "http://b/v1"
    assert (fb.upstream_model, fb.served_model_name, fb.parse_mode) == ("up-model", "served", "upstream")
    assert fb._headers == {"Authorization": "Bearer sk-up"} and fb._timeout.connect == 2.5
    big = stage.pool.by_name["big"].engine
    assert isinstance(big, UpstreamEngine) and big._headers == {"Authorization": "Bearer sk-big"}
    assert [u.name for u in stage.pool.default_chain] == ["primary", "fallback-1", "fallback-2"]
    assert [u.name for u in stage.pool.canary_chain] == ["canary", "primary", "fallback-1", "fallback-2"]
    assert stage.pool.by_name["canary"].retries == 0 and stage.pool.by_name["fallback-2"].retries == 3
    assert stage.pool.canary_weight == 0.25 and stage.pool.by_name["big"].breaker.failures == 7


def test_behind_a_local_primary_the_fallback_asks_for_the_name_the_client_used() -> None:
    stage = resilience(Settings(engine="local", model="/models/mistral", fallback_upstreams=["http://b/v1"]))
    fb = stage.pool.by_name["fallback-1"].engine
    assert isinstance(fb, UpstreamEngine) and fb.upstream_model is None


@pytest.mark.parametrize(("values", "fragment"), [
    ({"fallback_upstreams": ["gpu-b:8000"]}, "http"),
    ({"canary_upstream": "ftp://x"}, "http"),
    ({"canary_weight": 1.5}, "canary_weight"),
    ({"retries": -1}, "retries"),
    ({"upstreams": {"fallback-1": {"url": "http://x"}}}, "reserved"),
    ({"upstreams": {"a b": {"url": "http://x"}}}, "upstream name"),
    ({"upstreams": {"x": {"url": "http://x", "key": "typo"}}}, "upstreams"),
])
def test_bad_settings_are_one_line_config_errors(values: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        Settings.load(**values)


def test_the_config_file_names_upstreams(tmp_path: Path) -> None:
    config = tmp_path / "u.yaml"
    config.write_text("upstreams:\n  big: {url: 'http://big:8000/v1/', api_key: sk-big}\n"
                      "fallback_upstreams: ['http://b/v1']\nfirst_token_timeout_s: 30\n")
    s = Settings.load(config)
    assert s.upstreams["big"].url == "http://big:8000/v1" and s.fallback_upstreams == ["http://b/v1"]
    assert s.first_token_timeout_s == 30


def test_serve_flags_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Settings] = []
    monkeypatch.setattr(cli, "run_server", seen.append)
    cli.app(args=["serve", "--retries", "4", "--retry-backoff-s", "0.5", "--retry-max-wait-s", "2",
                  "--first-token-timeout-s", "20", "--total-timeout-s", "300", "--breaker-failures", "3",
                  "--breaker-window-s", "10", "--breaker-cooldown-s", "5",
                  "--fallback-upstream", "http://b/v1", "--fallback-upstream", "http://c/v1",
                  "--canary-upstream", "http://d/v1", "--canary-weight", "0.1"], standalone_mode=False)
    [s] = seen
    assert (s.retries, s.retry_backoff_s, s.retry_max_wait_s) == (4, 0.5, 2.0)
    assert (s.first_token_timeout_s, s.total_timeout_s) == (20.0, 300.0)
    assert (s.breaker_failures, s.breaker_window_s, s.breaker_cooldown_s) == (3, 10.0, 5.0)
    assert s.fallback_upstreams == ["http://b/v1", "http://c/v1"]
    assert (s.canary_upstream, s.canary_weight) == ("http://d/v1", 0.1)


def test_resilience_is_the_last_stage() -> None:
    for settings in (Settings(), Settings(rpm=5, max_concurrent=2, tpm=100)):
        stages = build_stages(settings, build_engines(settings, _Primary()))  # type: ignore[arg-type]
        assert isinstance(stages[-1], ResilienceStage)
        Pipeline(stages)  # names distinct (the two parts of the limits too)


def test_a_route_naming_an_unconfigured_upstream_is_a_start_up_error() -> None:
    s = Settings(routes={"cheap": {"upstreams": ["fallback-2"]}}, fallback_upstreams=["http://b/v1"])
    with pytest.raises(ConfigError, match="route 'cheap' names the upstream 'fallback-2'"):
        resilience(s)
    s = Settings(routes={"cheap": {"upstreams": ["big", "fallback-1", "canary"]}},
                 fallback_upstreams=["http://b/v1"], canary_upstream="http://c/v1",
                 upstreams={"big": {"url": "http://big/v1"}})
    assert resilience(s).upstream_names == ["primary", "fallback-1", "canary", "big"]
