"""``unimodel serve``'s flags are generated from the settings: one per field, the old names kept, structured
settings as JSON, help grouped in panels with the defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, get_args

import pytest
import typer
from pydantic.fields import FieldInfo
from typer.testing import CliRunner

import unimodel.cli as cli
from tests.support.serve_cli import serve_settings
from unimodel import settings_flags
from unimodel.config import Panel, Settings
from unimodel.settings_flags import PANELS, FlagError, flag_name, parameter

# every flag name `unimodel serve` had when its flags were written by hand: they keep working
OLD_FLAGS = [
    "--admin-key", "--alert-webhook-url", "--allow-image-urls", "--api-key", "--breaker-cooldown-s",
    "--breaker-failures", "--breaker-window-s", "--canary-upstream", "--canary-weight", "--config", "--cpu-threads",
    "--dashboard", "--data-dir", "--default-max-tokens", "--device", "--dtype", "--engine", "--fallback-upstream",
    "--first-token-timeout-s", "--high-reasoning-effort", "--high-reasoning-rpm", "--high-reasoning-tpm", "--host",
    "--idempotency", "--idempotency-in-flight", "--idempotency-max-bytes", "--idempotency-ttl",
    "--idempotency-wait-s", "--image-fetch-timeout-s", "--kv-memory-gb", "--limits-on-redis-failure",
    "--log-buffer-rows", "--log-db", "--log-level", "--log-prompts", "--log-secret", "--log-spill-path",
    "--max-concurrent", "--max-image-bytes", "--max-image-pixels", "--max-images-per-request", "--max-json-depth",
    "--max-model-len", "--max-num-seqs", "--max-prefill-tokens", "--max-queue", "--max-request-bytes", "--metrics",
    "--metrics-key", "--model", "--model-family", "--no-allow-image-urls", "--no-dashboard", "--no-idempotency",
    "--no-log-prompts", "--no-metrics", "--no-request-log", "--port", "--prompt-retention", "--queue-timeout",
    "--rate-limit-window-s", "--redis", "--request-log", "--retries", "--retry-backoff-s", "--retry-max-wait-s",
    "--rpm", "--served-model-name", "--shutdown-grace-s", "--total-timeout-s", "--tpm", "--unknown-fields",
    "--upstream", "--upstream-api-key", "--upstream-extra-field", "--upstream-parse", "--user-rpm", "--user-tpm",
    "--vllm-arg", "--vllm-gpu", "--vllm-gpus", "--vllm-kv-cache", "--vllm-weights", "--workers",
]


def _serve_command() -> Any:
    return typer.main.get_command(cli.app).commands["serve"]  # type: ignore[attr-defined]


_serve = serve_settings


def test_every_setting_is_exactly_one_flag() -> None:
    for name, field in Settings.model_fields.items():
        parameter(name, field)  # a setting the generator cannot turn into a flag fails here, by name
    params = {p.name: p for p in _serve_command().params}
    assert set(params) == set(Settings.model_fields) | {"config"}
    opts = [o for p in params.values() for o in p.opts + p.secondary_opts]
    assert len(opts) == len(set(opts))  # no two settings share a flag
    for name, field in Settings.model_fields.items():
        assert params[name].opts == [flag_name(name, field)], name


def test_the_generator_refuses_what_it_cannot_make_a_flag_of() -> None:
    with pytest.raises(FlagError, match="'odd' has a type no flag takes"):
        parameter("odd", FieldInfo(annotation=set[int], description="x", json_schema_extra={"panel": "server"}))
    with pytest.raises(FlagError, match="no description"):
        parameter("plain", FieldInfo(annotation=int, default=1, json_schema_extra={"panel": "server"}))
    with pytest.raises(FlagError, match="no --help panel"):
        parameter("plain", FieldInfo(annotation=int, default=1, description="x", json_schema_extra={"panel": "x"}))

    def command(port: Optional[int] = None, **flags: Any) -> None: ...

    with pytest.raises(FlagError, match="'port' is also a setting"):
        settings_flags.settings_options(command)


def test_a_flag_name_other_than_the_field_name_is_declared_on_the_field() -> None:
    fields = Settings.model_fields
    assert flag_name("queue_timeout_s", fields["queue_timeout_s"]) == "--queue-timeout"
    assert flag_name("api_keys", fields["api_keys"]) == "--api-key"
    assert flag_name("max_num_seqs", fields["max_num_seqs"]) == "--max-num-seqs"


def test_the_old_flag_names_all_still_exist() -> None:
    serve = _serve_command()
    assert set(OLD_FLAGS) - {o for p in serve.params for o in p.opts + p.secondary_opts} == set()


def test_old_flags_parse_to_the_same_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    s = _serve(monkeypatch, "--engine", "upstream", "--upstream", "http://gpu:8000/v1/", "--model", "m",
               "--port", "9001", "--queue-timeout", "12.5", "--idempotency-ttl", "60", "--prompt-retention", "7",
               "--api-key", "sk-a", "--api-key", "sk-b", "--vllm-arg=--max-num-seqs=64", "--vllm-arg=--enforce-eager",
               "--upstream-extra-field", "top_k", "--fallback-upstream", "http://b/v1", "--fallback-upstream",
               "http://c/v1", "--no-idempotency", "--log-prompts", "--allow-image-urls", "--no-metrics",
               "--high-reasoning-effort", "medium", "--limits-on-redis-failure", "closed", "--log-secret", "s3cret",
               "--data-dir", str(tmp_path), "--max-image-bytes", "2048")
    expected = Settings.load(
        None, engine="upstream", upstream="http://gpu:8000/v1/", model="m", port=9001, queue_timeout_s=12.5,
        idempotency_ttl_s=60, prompt_retention_days=7, api_keys=["sk-a", "sk-b"],
        vllm_args=["--max-num-seqs=64", "--enforce-eager"], upstream_extra_fields=["top_k"],
        fallback_upstreams=["http://b/v1", "http://c/v1"], idempotency=False, log_prompts=True, allow_image_urls=True,
        metrics=False, high_reasoning_effort="medium", limits_on_redis_failure="closed", log_secret="s3cret",
        data_dir=tmp_path, max_image_bytes=2048)
    assert s.model_dump() == expected.model_dump()
    assert (s.queue_timeout_s, s.api_keys, s.idempotency, s.metrics) == (12.5, ["sk-a", "sk-b"], False, False)
    assert s.log_secret is not None and s.log_secret.get_secret_value() == "s3cret"


def test_flags_not_given_keep_the_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "unimodel.yaml"
    cfg.write_text("port: 7001\nhost: 0.0.0.0\nqueue_timeout_s: 9\nidempotency: false\n")
    monkeypatch.setenv("UNIMODEL_PORT", "7002")
    s = _serve(monkeypatch, "--config", str(cfg), "--queue-timeout", "5")
    assert (s.port, s.host, s.queue_timeout_s, s.idempotency) == (7002, "0.0.0.0", 5.0, False)
    assert s.max_num_seqs == Settings.model_fields["max_num_seqs"].default  # not given anywhere: the default


def test_structured_flags_reach_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    s = _serve(monkeypatch, "--reasoning", '{"default_effort": "high", "budgets": {"high": 2048}}',
               "--reasoning-per-model", "{m-think: {default_effort: medium}}",  # a YAML flow value works too
               "--routes", '{"cheap": {"max_tokens": 100, "upstreams": ["big"]}}',
               "--upstreams", '{"big": {"url": "http://big:8000/v1/"}}',
               "--model-families", '{"qwen": "think-tags"}',
               "--alerts", '[{"name": "errors", "kind": "error_rate", "threshold": 0.05}]')
    assert (s.reasoning.default_effort, s.reasoning.budgets) == ("high", {"high": 2048})
    assert s.reasoning_for("m-think").default_effort == "medium"
    route = s.routes["cheap"]
    assert route is not None and route.max_tokens == 100 and s.route_policies["cheap"].upstreams == ["big"]
    assert s.upstreams["big"].url == "http://big:8000/v1" and s.model_families == {"qwen": "think-tags"}
    assert [a.name for a in s.alerts] == ["errors"]


@pytest.mark.parametrize("args,fragment", [
    (["--routes", '{"cheap": '], "Invalid value for '--routes': not JSON"),
    (["--reasoning", "[1, 2]"], "'--reasoning': must be a JSON object"),
    (["--keys", "{}"], "'--keys': must be a JSON array"),
    (["--reasoning", '{"default_effort": "extreme"}'], "invalid setting 'reasoning.default_effort'"),
])
def test_a_bad_structured_value_is_one_line_and_exit_2(args: list[str], fragment: str,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "run_server", lambda settings: pytest.fail("served with a bad flag"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", *args])
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unimodel: error: ") and fragment in lines[0], lines


def test_help_lists_the_panels_flags_and_defaults() -> None:
    result = CliRunner().invoke(cli.app, ["serve", "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    out = result.output
    positions = [out.index(title) for title in PANELS.values()]
    assert positions == sorted(positions)  # in PANELS' order
    for name, field in Settings.model_fields.items():
        assert flag_name(name, field) in out, name
    queue = next(line for line in out.splitlines() if "--queue-timeout " in line)
    assert "[default: 60.0]" in queue and "Seconds a request may wait" in queue
    assert "--no-idempotency" in out and "[default: idempotency]" in out
    assert "UNIMODEL_LOG_SECRET" in out and "Repeatable" in out and " JSON " in out


def test_the_panels_are_the_ones_settings_may_name() -> None:
    assert set(get_args(Panel)) == set(PANELS)
