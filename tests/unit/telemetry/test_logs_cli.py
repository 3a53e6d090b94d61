"""``unimodel logs`` and ``unimodel logs stats``: a rich table or JSON an operator can pipe, on both databases."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.unit.telemetry.conftest import make_row
from unimodel import logs_cli
from unimodel.logs_cli import parse_since
from unimodel.telemetry.stats import compute_stats, percentile
from unimodel.telemetry.store import LogStore, database_url

NOW = datetime.now(timezone.utc).replace(microsecond=0)


def fill(url: str) -> None:
    """Six requests, 10 s apart, ending 5 minutes ago: four answered (two at effort none, two at high), one
    rate-limited, one failed upstream; one older request two days before."""
    store = LogStore(database_url(url, Path("/nonexistent")))
    store.migrate()
    start = NOW - timedelta(minutes=5, seconds=50)
    rows = []
    for i in range(4):
        effort = "none" if i < 2 else "high"
        rows.append(make_row(0, request_id=f"ok-{i}", created_at=(start + timedelta(seconds=10 * i)).isoformat(),
                             latency_ms=100.0 * (i + 1), ttft_ms=10.0 * (i + 1), ttfa_ms=20.0 * (i + 1),
                             reasoning_effort=effort, model_effort=effort, prompt_tokens=5, completion_tokens=10,
                             reasoning_tokens=4 if effort == "high" else 0, route="hard" if i == 3 else "default",
                             key_name="team-b" if i % 2 else "team-a", user_hash="ab" * 32))
    rows.append(make_row(0, request_id="limited", created_at=(start + timedelta(seconds=40)).isoformat(),
                         status=429, error_type="rate_limited", latency_ms=5.0, prompt_tokens=None,
                         completion_tokens=None, reasoning_tokens=None, finish_reason=None))
    rows.append(make_row(0, request_id="failed", created_at=(start + timedelta(seconds=50)).isoformat(),
                         status=502, error_type="upstream_error", latency_ms=1000.0, prompt_tokens=None,
                         completion_tokens=None, reasoning_tokens=None, finish_reason=None))
    store.insert([make_row(0, request_id="old", created_at=(NOW - timedelta(days=2)).isoformat())] + rows)
    store.dispose()


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(logs_cli.logs_app, list(args), env={"COLUMNS": "250"})
    return result.exit_code, result.stdout, result.stderr


def test_logs_prints_the_newest_rows_as_a_table(db_url: str) -> None:
    fill(db_url)
    code, out, err = invoke("--db", db_url, "--since", "1h")
    assert code == 0, err
    assert "6 requests, newest first" in out
    order = [out.index(name) for name in ("failed", "limited", "ok-3", "ok-2", "ok-1", "ok-0")]
    assert order == sorted(order) and "old" not in out.split("newest first")[1].split()
    assert "rate_limited" in out and "high" in out and "5/4/10" in out
    code, out, _ = invoke("--db", db_url, "--limit", "2")
    assert "2 requests" in out and "failed" in out and "ok-3" not in out


def test_logs_json_is_one_object_per_line_and_filters(db_url: str) -> None:
    fill(db_url)
    code, out, err = invoke("--db", db_url, "--json", "--key", "team-b", "--route", "default")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["request_id"] for r in rows] == ["ok-1"]
    row = rows[0]
    for key in ("request_id", "route", "model", "reasoning_effort", "model_effort", "prompt_tokens",
                "reasoning_tokens", "completion_tokens", "ttft_ms", "ttfa_ms", "latency_ms", "status", "error_type",
                "finish_reason", "user_hash", "key_name", "created_at", "upstream", "tool_names", "image_count"):
        assert key in row
    assert row["user_hash"] == "ab" * 32 and row["created_at"].endswith("+00:00")
    code, out, _ = invoke("--db", db_url, "--json")
    assert len(out.splitlines()) == 7
    code, out, _ = invoke("--db", db_url, "--json", "--since", (NOW - timedelta(minutes=5, seconds=25)).isoformat())
    assert [json.loads(line)["request_id"] for line in out.splitlines()] == ["failed", "limited", "ok-3"]


def test_stats_json(db_url: str) -> None:
    fill(db_url)
    code, out, err = invoke("stats", "--db", db_url, "--since", "1h", "--json", "--gpu", "h200", "--gpus", "2")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["requests"] == 6 and stats["errors"] == 2
    assert stats["errors_by_type"] == {"rate_limited": 1, "upstream_error": 1}
    assert stats["tokens_by_effort"]["high"] == {"requests": 2, "prompt_tokens": 10, "reasoning_tokens": 8,
                                                 "completion_tokens": 20, "estimated": 0}
    assert stats["tokens_by_effort"]["none"]["requests"] == 4  # the two errors carried effort none too
    assert stats["latency_ms"] == {"p50": 250.0, "p95": 385.0}  # over the four answered requests
    assert stats["ttft_ms"] == {"p50": 25.0, "p95": 38.5}
    assert stats["ttfa_ms"] == {"p50": 50.0, "p95": 77.0}
    cost = stats["cost"]
    assert cost["gpu"] == "h200" and cost["gpus"] == 2 and cost["price_per_gpu_hour"] == 3.96
    assert cost["window_s"] == pytest.approx(51.0)  # first arrival to the last request's end
    assert cost["tokens_per_s"] == pytest.approx(40 / 51, abs=1e-3)
    assert cost["hourly_usd"] == pytest.approx(7.92)
    assert cost["usd_per_million_tokens"] == pytest.approx(7.92 / (40 / 51 * 3600) * 1e6, rel=1e-3)
    code, out, _ = invoke("stats", "--db", db_url, "--json", "--price-per-gpu-hour", "1", "--gpus", "1")
    assert json.loads(out)["requests"] == 7 and json.loads(out)["cost"]["hourly_usd"] == 1.0


def test_stats_table(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    fill(url)
    code, out, err = invoke("stats", "--db", url, "--since", "1h")
    assert code == 0, err
    for text in ("Request log", "requests", "Errors by type", "upstream_error", "Tokens by reasoning effort",
                 "latency p50 / p95", "250 ms / 385 ms"):
        assert text in out
    assert "Cost estimate" not in out and "h200" not in out  # no hardware named: no price made up
    code, out, err = invoke("stats", "--db", url, "--since", "1h", "--gpu", "h200", "--gpus", "2")
    assert code == 0, err
    assert "Cost estimate" in out and "2 × h200 at $3.96/GPU-hour" in out


def test_errors_are_one_line(tmp_path: Path) -> None:
    code, _, err = invoke("--db", str(tmp_path / "missing.db"))
    assert code == 1 and err.startswith("unimodel: error: there is no request log at") and err.count("\n") == 1
    code, _, err = invoke("--db", "mysql://h/db")
    assert code == 2 and "postgresql://" in err
    url = f"sqlite:///{tmp_path / 'r.db'}"
    fill(url)
    code, _, err = invoke("--db", url, "--since", "yesterday")
    assert code == 2 and "--since" in err
    code, _, err = invoke("stats", "--db", url, "--gpu", "tpu")
    assert code == 2 and "unknown GPU" in err
    for span in ("99999999999d", "99999999w", "9" * 400 + "s"):  # past timedelta, or before the year 1
        code, _, err = invoke("--db", url, "--since", span)
        assert code == 2 and err.startswith("unimodel: error: --since") and err.count("\n") == 1, err
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("# café\n".encode("latin-1"))
    code, _, err = invoke("--config", str(latin1))
    assert code == 2 and "not UTF-8" in err and err.count("\n") == 1, err


def test_the_unimodel_command_has_logs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    fill(url)
    done = subprocess.run([sys.executable, "-m", "unimodel.cli", "logs", "--db", url, "--json", "--limit", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["request_id"] == "failed"


def test_since_spans() -> None:
    now = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
    assert parse_since("90m", now) == now - timedelta(minutes=90)
    assert parse_since("1.5h", now) == now - timedelta(minutes=90)
    assert parse_since("2d", now) == now - timedelta(days=2)
    assert parse_since("2026-04-30T00:00:00", now) == datetime(2026, 4, 30, tzinfo=timezone.utc)
    assert parse_since(None, now) is None


def test_percentiles_and_empty_stats() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 95) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    stats = compute_stats([])
    assert stats.requests == 0 and stats.cost is None and stats.latency_ms == {"p50": None, "p95": None}
