"""The dashboard in a real browser: Debian's chromium, headless, over the DevTools protocol.

A real server in front of the scripted upstream answers real requests; the page, opened with the key in its
address once, must load with no console error (a CSP violation or a failed load counts), drop the key from
its address, and draw charts of exactly those requests. A screenshot is kept under the test's tmp path, and
in ``$UNIMODEL_TEST_ARTIFACTS`` when set.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from tests.support.browser import Chromium, find_chromium
from tests.support.live_server import LiveServer
from tests.support.scripted_upstream import ScriptedUpstream
from unimodel.config import Settings
from unimodel.compose import build_engine
from unimodel.gateway.keys import plain_key_name

pytestmark = pytest.mark.slow

KEY = "sk-dashboard-browser-test-key"


def send_traffic(client: httpx.Client) -> int:
    """Seven requests: five answered (two efforts, streamed or not), one upstream failure, one refused."""
    bodies = [
        {"model": "raw-think", "reasoning_effort": "high", "stream": True},
        {"model": "raw-think", "reasoning_effort": "high"},
        {"model": "raw-think", "reasoning_effort": "high", "stream": True},
        {"model": "raw-plain", "reasoning_effort": "none"},
        {"model": "raw-plain", "reasoning_effort": "none", "stream": True},
        {"model": "fails-503", "reasoning_effort": "none"},
        {"model": "raw-plain", "reasoning_effort": "none", "max_tokens": -1},
    ]
    statuses = []
    for body in bodies:
        body["messages"] = [{"role": "user", "content": "What is 2 + 2?"}]
        response = client.post("/chat/completions", json=body)
        response.read()
        statuses.append(response.status_code)
    assert statuses.count(200) == 5 and statuses[5] >= 500 and statuses[6] == 400, statuses
    return len(bodies)


def test_the_dashboard_draws_real_traffic_in_chromium(scripted_upstream: ScriptedUpstream, tmp_path: Path) -> None:
    executable = find_chromium()
    if executable is None:
        pytest.fail("Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it): "
                    "the dashboard's browser test needs it")
    started = time.monotonic()
    settings = Settings(engine="upstream", upstream=scripted_upstream.base_url, api_keys=[KEY], retries=0,
                        request_log=False)
    with LiveServer(settings, build_engine(settings)) as server, \
            httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as client:
        sent = send_traffic(client)
        with Chromium(executable) as browser:
            page = browser.new_page()
            page.navigate(f"http://127.0.0.1:{server.port}/dashboard?key={KEY}")
            page.wait_for("Number(document.body.dataset.updates || 0) >= 1", timeout_s=20)

            assert page.evaluate("document.body.dataset.state") == "ok"
            assert page.evaluate("location.search") == ""  # the key left the address bar at once
            chart = "document.getElementById('{}').dataset.{}"
            assert int(page.evaluate(chart.format("chart-requests", "count"))) == sent
            assert int(page.evaluate(chart.format("chart-requests", "points"))) >= 2  # requests, errors lines
            assert int(page.evaluate(chart.format("chart-latency", "count"))) == 5  # the answered requests
            assert int(page.evaluate(chart.format("chart-latency", "points"))) >= 2  # p50 and p95
            assert int(page.evaluate(chart.format("chart-ttft", "points"))) >= 2
            assert int(page.evaluate(chart.format("chart-effort", "count"))) == sent
            assert int(page.evaluate(chart.format("chart-effort", "tokens"))) > 0
            assert int(page.evaluate(chart.format("chart-errors", "count"))) == 2
            assert int(page.evaluate(chart.format("chart-keys", "count"))) == sent
            assert page.evaluate("document.querySelectorAll('#chart-latency circle.point').length") >= 2
            efforts = page.evaluate("[...document.querySelectorAll('#chart-effort text.label')]"
                                    ".map(t => t.textContent)")
            assert {"high", "none"} <= set(efforts)
            assert plain_key_name(KEY) in page.evaluate("document.getElementById('chart-keys').textContent")
            assert page.evaluate("document.getElementById('t-requests').textContent") == str(sent)

            # a second refresh draws the same counts (no double counting across polls)
            page.wait_for("Number(document.body.dataset.updates) >= 2", timeout_s=10)
            assert int(page.evaluate(chart.format("chart-requests", "count"))) == sent

            shot = page.screenshot(tmp_path / "dashboard.png")
            assert page.console_errors() == []

            # the harness does see errors: a console error, an uncaught exception, an inline script the CSP refuses
            probe = browser.new_page()
            probe.navigate("data:text/html,<script>console.error('probe'); undefined_function();</script>")
            probe.wait_for("true")
            found = probe.console_errors()
            assert any("probe" in e for e in found) and any("undefined_function" in e for e in found), found
            blocked = browser.new_page()
            blocked.navigate(f"http://127.0.0.1:{server.port}/dashboard?key={KEY}")
            blocked.evaluate("const s = document.createElement('script'); s.textContent = 'window.ran = 1'; "
                             "document.head.appendChild(s); true")
            assert blocked.evaluate("window.ran === undefined")  # a script without the nonce does not run
            blocked.wait_for("Number(document.body.dataset.updates || 0) >= 1", timeout_s=20)
            assert any("Content Security Policy" in e for e in blocked.console_errors()), blocked.console_errors()
    artifacts = os.environ.get("UNIMODEL_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / "dashboard.png")
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"dashboard browser test: {time.monotonic() - started:.1f} s, screenshot {shot}")
