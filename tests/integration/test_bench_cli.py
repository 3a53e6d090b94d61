"""`unimodel bench` end to end: the CLI against a live unimodel on both engines, and straight at an upstream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tests.support.live_server import LiveServer
from tests.support.scripted_upstream import Script, ScriptedUpstream
from unimodel.bench.cli import register
from unimodel.bench.schema import METRICS, PERCENTILES, Results
from unimodel.config import Settings
from unimodel.compose import build_engine

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
PLOTS = ("latency_cdf.png", "throughput_vs_concurrency.png", "ttft_vs_concurrency.png")


def bench(*args: str) -> tuple[int, str]:
    app = typer.Typer()

    @app.callback()
    def _root() -> None: ...

    register(app)
    result = CliRunner().invoke(app, ["bench", *args])
    return result.exit_code, result.output


def check_schema(out: Path) -> dict:
    """The documented schema: pydantic's validation, and the fields the issue names, read as plain JSON."""
    text = (out / "results.json").read_text()
    Results.model_validate_json(text)
    data = json.loads(text)
    summary = data["summary"]
    assert isinstance(summary["completed"], int) and isinstance(summary["errors"], int)
    assert set(summary["throughput"]) >= {"requests_per_s", "output_tokens_per_s"}
    for metric in METRICS:
        assert all(f"p{p}" in summary[metric] for p in PERCENTILES)
    return data


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    scripts = {"thinker": Script(mode="parsed", reasoning="Let me think. " * 3, content="The answer is 4.",
                                 chunk_chars=4, frame_delay_s=0.002, honors_effort=True),
               "slow": Script(mode="parsed", content="abcd" * 10, chunk_chars=4, frame_delay_s=0.05)}  # ~0.5 s
    with ScriptedUpstream(scripts) as up:
        yield up


def test_cli_against_unimodel_in_front_of_the_scripted_upstream(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    settings = Settings(engine="upstream", upstream=upstream.base_url)
    before = len(upstream.requests)
    with LiveServer(settings, build_engine(settings)) as server:
        code, output = bench("--url", server.base_url, "--model", "thinker", "--reasoning-effort", "none,high",
                             "--concurrency", "2", "--requests", "6", "--warmup", "1", "--slo", "ttft=5s,e2e=10s",
                             "--out", str(tmp_path))
    assert code == 0, output
    data = check_schema(tmp_path)
    assert [run["label"] for run in data["runs"]] == ["effort=none c=2", "effort=high c=2"]
    summary = data["summary"]
    assert summary["completed"] + summary["errors"] == 12 and summary["errors"] == 0
    # what the upstream saw: 6 a run, a warm-up each, and the test request before the run (chat: one kind)
    assert len(upstream.requests) - before == 12 + 2 + 1
    none, high = (run["summary"] for run in data["runs"])
    assert none["tokens"]["reasoning_total"] == 0 and high["tokens"]["reasoning_total"] > 0
    assert high["tokens"]["reasoning_source"] == "usage" and high["ttfa"]["p50"] > high["ttft"]["p50"]
    assert summary["slo"]["good"] == 12
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == 12
    report = (tmp_path / "report.md").read_text()
    assert "effort=none c=2" in report and "effort=high c=2" in report
    assert (tmp_path / "latency_cdf.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    for png in PLOTS[1:]:  # one concurrency per effort: the runs table, not one-dot charts
        assert not (tmp_path / png).exists()
        assert f"`{png}` not drawn: one load level" in report
    assert "effort=high c=2" in output  # the results table


def test_cli_with_a_key_a_jsonl_workload_and_an_open_loop(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    requests = tmp_path / "requests.jsonl"
    requests.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"}],
                                              "max_tokens": 16}) for i in range(3)) + "\n")
    settings = Settings(engine="upstream", upstream=upstream.base_url, api_keys=["sk-bench"])
    with LiveServer(settings, build_engine(settings)) as server:
        stopped, output0 = bench("--url", server.base_url, "--model", "thinker", "--workload", str(requests),
                                 "--requests", "3", "--out", str(tmp_path / "stopped"))
        refused, output = bench("--url", server.base_url, "--model", "thinker", "--workload", str(requests),
                                "--requests", "3", "--no-preflight", "--out", str(tmp_path / "no-key"))
        code, output2 = bench("--url", server.base_url, "--model", "thinker", "--workload", str(requests),
                              "--api-key", "sk-bench", "--rate", "20", "--requests", "5",
                              "--out", str(tmp_path / "key"))
    assert stopped == 1 and "give --api-key KEY" in output0 and not (tmp_path / "stopped").exists()
    assert refused == 1, output  # nothing completed
    data = check_schema(tmp_path / "no-key")
    assert data["summary"]["errors_by_type"] == {"http_401": 3}
    assert [(e["kind"], e["count"]) for e in data["errors"]] == [("http_401 invalid_api_key", 3)]
    assert code == 0, output2
    data = check_schema(tmp_path / "key")
    assert data["config"]["mode"] == "open" and data["summary"]["completed"] == 5


def test_cli_straight_at_the_scripted_upstream(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    before = len(upstream.requests)
    code, output = bench("--url", upstream.base_url, "--model", "thinker", "--workload", "mixed", "--sweep",
                         "--max-concurrency", "2", "--requests", "4", "--out", str(tmp_path))
    assert code == 0, output
    data = check_schema(tmp_path)
    assert [run["concurrency"] for run in data["runs"]] in ([1], [1, 2])
    sent = data["summary"]["completed"] + data["summary"]["errors"]
    assert len(upstream.requests) - before == sent + 4  # and the test request of each of mixed's four kinds
    assert [s["kind"] for s in data["config"]["shape"]] == ["chat", "reasoning", "vision", "tools"]


def test_cli_usage_errors(tmp_path: Path) -> None:
    for args, message in ((["--concurrency", "2", "--rate", "3"], "not both"),
                          (["--reasoning-effort", "extreme"], "extreme"),
                          (["--slo", "speed=1s"], "--slo"),
                          (["--workload", "poems"], "unknown workload")):
        code, output = bench("--url", "http://127.0.0.1:9/v1", "--model", "m", "--out", str(tmp_path), *args)
        assert code == 2 and message in output
    code, output = bench("--url", "notaurl", "--model", "m", "--out", str(tmp_path))
    assert code == 2 and "--url must be an http(s) URL" in output


def test_cli_against_the_local_engine(tiny_cache_dir: Path, tmp_path: Path) -> None:
    settings = Settings(engine="local", model="tiny-random", cache_dir=tiny_cache_dir, device="cpu",
                        dtype="float32")
    with LiveServer(settings, build_engine(settings)) as server:
        code, output = bench("--url", server.base_url, "--model", "tiny-random", "--concurrency", "2",
                             "--requests", "4", "--input-tokens", "16", "--output-tokens", "8", "--ignore-eos",
                             "--out", str(tmp_path))
    assert code == 0, output
    summary = check_schema(tmp_path)["summary"]
    assert (summary["completed"], summary["errors"]) == (4, 0)
    assert summary["tokens"]["source"] == "usage" and summary["tokens"]["output_total"] == 4 * 8
    assert summary["ttft"]["count"] == 4 and summary["itl"]["count"] == 4


def test_ctrl_c_writes_what_was_measured(upstream: ScriptedUpstream, tmp_path: Path) -> None:
    before = len(upstream.requests)
    # Ctrl-C as a terminal delivers it: a shell that starts its background jobs without job control (nohup …
    # &, a CI runner) makes them ignore SIGINT, and that would pass on to the bench and defeat the test
    proc = subprocess.Popen([sys.executable, "-c", "import runpy, signal; signal.signal(signal.SIGINT, "
                             "signal.default_int_handler); runpy.run_module('unimodel.cli', run_name='__main__', "
                             "alter_sys=True)", "bench", "--url", upstream.base_url, "--model",
                             "slow", "--concurrency", "2", "--requests", "1000", "--no-preflight",  # counts exact
                             "--out", str(tmp_path)],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while len(upstream.requests) - before < 5:  # closed loop: the 5th request went out once 3 had ended
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()  # else a failure here leaves the pipe to be reported as unclosed by a later test
    assert proc.returncode == 130, output.decode(errors="replace")
    data = check_schema(tmp_path)
    assert data["interrupted"] is True
    summary = data["summary"]
    assert summary["completed"] >= 3 and summary["errors"] == 0 and summary["incomplete"] == 2
    measured = summary["completed"] + summary["incomplete"]
    deadline = time.monotonic() + 2  # the upstream's handler threads may still be reading the last bodies
    while len(upstream.requests) - before < measured and time.monotonic() < deadline:
        time.sleep(0.05)
    # every request sent either completed or was in flight; one cancelled before its bytes left is not seen
    assert measured - 2 <= len(upstream.requests) - before <= measured
    assert (tmp_path / "report.md").read_text().count("interrupted") >= 1
