"""What a suite needs of the endpoint: declared, stated in ``--help`` and the report, and checked with one request
before the run, against live servers on tiny-random (text-only) and tiny-random-vision."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.support.live_server import LiveServer
from tests.unit.evals.conftest import eval_cli
from unimodel.evals.requirements import NEEDS, preflight
from unimodel.evals.runner import EvalConfig
from unimodel.evals.tasks import SUITE_NAMES, build_suites

pytestmark = pytest.mark.slow

REFUSAL = "unimodel: error: the vision suite needs a model that takes images; tiny-random answered 400: the model "


def refusal(err: str) -> str:
    """The one line of a refused vision suite, checked; what comes after the server's message."""
    assert err.startswith(REFUSAL) and err.count("\n") == 1 and err.endswith("\n"), err
    assert err.count("tiny-random-vision") == 1, err  # said once: by the server's 400, else by the hint
    return err[len(REFUSAL):]
QUICK = ["--samples", "1", "--max-tokens", "2", "--reasoning-effort", "none", "--no-plots"]


def test_every_suite_declares_its_needs_and_help_states_them() -> None:
    suites = build_suites(SUITE_NAMES)
    assert {name: s.needs for name, s in suites.items()} == {
        "math": (), "json": ("json_schema",), "tools": ("tools",), "code": (), "vision": ("images",)}
    assert all(n in NEEDS for s in suites.values() for n in s.needs)
    code, out, _ = eval_cli("--help")
    assert code == 0
    text = " ".join(out.replace("│", " ").split())  # the help as one line, whatever rich wrapped
    keyword = {"images": "images", "tools": "tool", "json_schema": "json_schema"}
    for name, suite in suites.items():
        stated = f"{name} (needs" in text
        assert stated == bool(suite.needs), name
        for need in suite.needs:
            start = text.index(f"{name} (needs")
            assert keyword[need] in text[start:text.index(")", start)], (name, need)
    assert "--skip-unsupported" in text and "--full" in text


def test_a_text_only_model_is_refused_the_vision_suite_in_one_line(tiny_random_server: LiveServer,
                                                                   tmp_path: Path) -> None:
    code, out, err = eval_cli("--url", tiny_random_server.base_url, "--suite", "vision", *QUICK, "--out",
                              str(tmp_path))
    assert code == 2, out + err
    assert refusal(err).endswith("tiny-random-vision\n")
    assert not (tmp_path / "results.json").exists() and out == ""


def test_a_mixed_list_is_refused_up_front_and_says_how_to_run_the_rest(tiny_random_server: LiveServer,
                                                                       tmp_path: Path) -> None:
    code, out, err = eval_cli("--url", tiny_random_server.base_url, "--suite", "math,tools,vision", *QUICK, "--out",
                              str(tmp_path))
    assert code == 2, out + err
    assert refusal(err).endswith("tiny-random-vision; or leave vision out of --suite, or pass --skip-unsupported to "
                                 "run the others\n")
    assert not (tmp_path / "results.json").exists()


def test_skip_unsupported_runs_the_others_and_the_report_says_what_was_left_out(
        tiny_random_server: LiveServer, tmp_path: Path) -> None:
    code, out, err = eval_cli("--url", tiny_random_server.base_url, "--suite", "math,tools,vision",
                              "--skip-unsupported", *QUICK, "--out", str(tmp_path))
    assert code == 0, out + err
    assert "unimodel: skipping: the vision suite needs a model that takes images; tiny-random answered 400" in err
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["suites"] == ["math", "tools"]
    assert {s["suite"] for s in results["scores"]} == {"math", "tools", "all"}
    checks = {c["suite"]: c for c in results["checks"]}
    assert (checks["tools"]["ok"], checks["vision"]["ok"], checks["vision"]["refused"]) == (True, False, True)
    assert checks["vision"]["answer"].startswith("400: the model 'tiny-random' is text-only")
    report = (tmp_path / "report.md").read_text()
    assert "| vision | generated images: count the shapes, read the digit | a model that takes images | skipped: " \
           "answered 400: the model 'tiny-random' is text-only" in report
    assert "| tools | tool calls checked on the function and its arguments | a model that takes tool definitions " \
           "(tools) | accepted |" in report
    assert "skipped: the vision suite needs a model that takes images" in " ".join(out.split())


def test_a_vision_model_passes_the_check_and_runs_the_suite(tiny_vision_server: LiveServer, tmp_path: Path) -> None:
    code, out, err = eval_cli("--url", tiny_vision_server.base_url, "--suite", "vision", *QUICK, "--out",
                              str(tmp_path))
    assert code == 0, out + err
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["checks"] == [{"suite": "vision", "needs": ["images"], "model": "tiny-random-vision", "ok": True,
                                  "refused": False, "answer": "accepted"}]
    assert [t["error"] for t in results["tasks"]] == [None]


def test_suites_that_need_nothing_send_no_preflight_and_an_unreachable_endpoint_is_not_a_refusal() -> None:
    config = EvalConfig(url="http://127.0.0.1:9/v1", model="m", efforts=("none",), retries=0)
    assert asyncio.run(preflight(build_suites(["math", "code"]), config)) == []
    (check,) = asyncio.run(preflight(build_suites(["math", "vision"]), config))
    assert not check.ok and not check.refused and check.answer.startswith("ConnectError")
    assert check.line().startswith("could not check that m can run the vision suite, which needs a model that "
                                   "takes images: ConnectError")
