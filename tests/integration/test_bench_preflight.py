"""`unimodel bench` tells why at a glance, at 80 columns, against a real unimodel (uvicorn, in front of the
scripted upstream or the local engine): the test request before the run stops a bench the endpoint would refuse
with one line that says what to fix and writes nothing; with --no-preflight the errors are a table under the
results and a field of results.json, and no plot is drawn without data; the report states the real workload."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tests.support.live_server import LiveServer
from tests.support.loopback_http import closed_port
from tests.support.scripted_upstream import Script, ScriptedUpstream
from unimodel.bench.cli import register
from unimodel.config import Settings
from unimodel.compose import build_engine

pytestmark = pytest.mark.slow
KEY = "sk-bench-preflight"


def bench(*args: str) -> tuple[int, str, str]:
    app = typer.Typer()

    @app.callback()
    def _root() -> None: ...

    register(app)
    result = CliRunner().invoke(app, ["bench", *args], env={"COLUMNS": "80"})
    return result.exit_code, result.stdout, result.stderr


def refused(out: Path, *args: str) -> str:
    """The one line a refused preflight ends with: exit code 1, nothing on stdout, nothing written."""
    code, stdout, stderr = bench("--out", str(out), *args)
    assert code == 1, stdout + stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unimodel: error: "), stderr
    assert stdout == "" and not out.exists()  # no results, no report, no plots
    return lines[0].removeprefix("unimodel: error: ")


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    """unimodel with a key, its default route capping max_tokens at 512, in front of a scripted model."""
    scripts = {"thinker": Script(mode="parsed", reasoning="Let me think. ", content="The answer is 4.",
                                 chunk_chars=4, honors_effort=True)}
    with ScriptedUpstream(scripts) as upstream:
        settings = Settings(engine="upstream", upstream=upstream.base_url, api_keys=[KEY],
                            routes={"default": {"max_tokens": 512}})
        with LiveServer(settings, build_engine(settings)) as live:
            yield live


def test_a_dead_url(tmp_path: Path) -> None:
    url = closed_port()
    line = refused(tmp_path / "out", "--url", url, "--model", "m")
    assert line == f"cannot connect to {url} (Connection refused): is the server running, and is --url right?"


def test_a_model_name_that_is_not_served(server: LiveServer, tmp_path: Path) -> None:
    line = refused(tmp_path / "out", "--url", server.base_url, "--model", "mistral", "--api-key", KEY)
    assert line == f"model 'mistral' is not served at {server.base_url}; it serves: thinker (pass one to --model)"


def test_a_url_without_v1(server: LiveServer, tmp_path: Path) -> None:
    root = server.base_url.removesuffix("/v1")
    line = refused(tmp_path / "out", "--url", root, "--model", "thinker", "--api-key", KEY)
    assert line == (f"the server at {root} answered 404 for /chat/completions: is the URL missing /v1 "
                    f"(try --url {root}/v1)?")


def test_no_key(server: LiveServer, tmp_path: Path) -> None:
    line = refused(tmp_path / "out", "--url", server.base_url, "--model", "thinker")
    assert line.startswith(f"the server at {server.base_url} refused the test request (401 invalid_api_key: ")
    assert line.endswith("give --api-key KEY")


def test_a_route_that_caps_max_tokens_below_the_reasoning_workloads(server: LiveServer, tmp_path: Path) -> None:
    line = refused(tmp_path / "out", "--url", server.base_url, "--model", "thinker", "--api-key", KEY,
                   "--workload", "reasoning")
    assert "refused the reasoning workload's test request (400 invalid_value: max_tokens (2048) is above the cap " \
           "of 512 tokens set by the route 'default'.)" in line
    assert line.endswith("it sends max_tokens 2048; lower it with --max-tokens N")

    out = tmp_path / "fixed"  # as the line says: the workload's shape in the report is what was sent
    code, stdout, stderr = bench("--url", server.base_url, "--model", "thinker", "--api-key", KEY, "--workload",
                                 "reasoning", "--max-tokens", "512", "--requests", "3", "--out", str(out))
    assert code == 0, stdout + stderr
    report = (out / "report.md").read_text()
    assert "- workload: `reasoning`: 16 distinct prompts of ~" in report and "max_tokens 512;" in report
    assert "input ~128" not in report and "output 128" not in report
    [shape] = json.loads((out / "results.json").read_text())["config"]["shape"]
    assert shape["kind"] == "reasoning" and shape["max_tokens_min"] == 512 and shape["prompt_tokens"] < 40


def test_without_the_preflight_the_errors_are_a_table_and_no_plot_is_drawn(server: LiveServer,
                                                                           tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = bench("--url", server.base_url, "--model", "thinker", "--api-key", KEY, "--workload",
                                 "reasoning", "--requests", "4", "--concurrency", "2", "--no-preflight",
                                 "--out", str(out))
    assert code == 1, stdout + stderr  # nothing completed
    lines = stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), stdout
    title = next(i for i, line in enumerate(lines) if "errors, by type" in line)
    row = next(line for line in lines[title:] if "http_400 invalid_value" in line)
    assert row.split()[:3] == ["http_400", "invalid_value", "4"]
    assert "max_tokens (2048) is above the cap of 512 tokens" in " ".join(" ".join(lines[title:]).split())
    assert "not drawn (no request completed)" in stdout
    data = json.loads((out / "results.json").read_text())
    assert data["errors"] == [{"kind": "http_400 invalid_value", "status": 400, "count": 4,
                               "sample": "max_tokens (2048) is above the cap of 512 tokens set by the route "
                                         "'default'."}]
    assert not list(out.glob("*.png"))
    report = (out / "report.md").read_text()
    assert "| http_400 invalid_value | 4 | max_tokens (2048) is above the cap" in report
    assert "`latency_cdf.png` not drawn: no request completed" in report


def test_mixed_on_a_text_only_model_stops_on_its_vision_part(tiny_cache_dir: Path, tmp_path: Path) -> None:
    settings = Settings(engine="local", model="tiny-random", cache_dir=tiny_cache_dir, device="cpu",
                        dtype="float32")
    with LiveServer(settings, build_engine(settings)) as local:
        line = refused(tmp_path / "out", "--url", local.base_url, "--model", "tiny-random", "--workload", "mixed",
                       "--max-tokens", "4")
    assert line.startswith(f"the server at {local.base_url} refused the vision workload's test request "
                           "(400 unsupported_feature: ")
    assert line.endswith("it sends images; use a model that reads images, or another --workload")
