"""The dashboard's data and its keys, and alerts, through a real server in front of the scripted upstream."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest

from tests.support.live_server import LiveServer
from tests.support.scripted_upstream import ScriptedUpstream
from tests.support.webhook_receiver import WebhookReceiver
from unimodel.config import Settings
from unimodel.compose import build_engine
from unimodel.gateway.keys import plain_key_name

pytestmark = pytest.mark.slow

KEY_1, KEY_2, ADMIN = "sk-dash-one-0123456789", "sk-dash-two-0123456789", "sk-admin-0123456789abc"


def server(upstream: ScriptedUpstream, **settings: Any) -> LiveServer:
    s = Settings(engine="upstream", upstream=upstream.base_url, retries=0, request_log=False, **settings)
    return LiveServer(s, build_engine(s))


def chat(base_url: str, key: str | None, model: str = "raw-think", **body: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{base_url}/chat/completions", headers=headers, timeout=30,
                      json={"model": model, "messages": [{"role": "user", "content": "What is 2 + 2?"}], **body})


def root(live: LiveServer) -> str:
    return f"http://127.0.0.1:{live.port}"


def test_dashboard_data_reflects_real_requests(scripted_upstream: ScriptedUpstream) -> None:
    with server(scripted_upstream, api_keys=[KEY_1, KEY_2]) as live:
        for _ in range(3):
            assert chat(live.base_url, KEY_1, reasoning_effort="high").status_code == 200
        assert chat(live.base_url, KEY_2, "raw-plain", reasoning_effort="none", stream=True).status_code == 200
        assert chat(live.base_url, KEY_2, "fails-503").status_code >= 500
        response = httpx.get(f"{root(live)}/dashboard/data", params={"window_s": 300},
                             headers={"Authorization": f"Bearer {KEY_2}"}, timeout=10)
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    data = response.json()
    totals = data["totals"]
    assert data["window_s"] == 300 and data["step_s"] == 5
    assert totals["requests"] == 5 and totals["server_errors"] == 1 and totals["error_rate"] == 20.0
    assert totals["latency_ms"]["count"] == 4 and totals["latency_ms"]["p95"] > 0
    assert totals["ttft_ms"]["count"] == 4
    assert sum(data["series"]["requests"]) == 5 and len(data["series"]["requests"]) == 60
    assert data["series"]["seconds_ago"][-1] == 0
    high = data["tokens_by_effort"]["high"]
    assert high["requests"] == 3 and high["prompt"] > 0 and high["reasoning"] > 0 and high["answer"] > 0
    assert data["tokens_by_effort"]["none"]["requests"] == 2
    assert data["errors_by_type"] == [["upstream_error", 1]]
    assert data["top_routes"] == [["default", 5]]
    assert [(k["key"], k["requests"], k["server_errors"]) for k in data["top_keys"]] == [
        (plain_key_name(KEY_1), 3, 0), (plain_key_name(KEY_2), 2, 1)]
    assert data["alerts"] == {"rules": 0, "firing": [], "recent": []}


def test_the_dashboard_takes_the_api_keys(scripted_upstream: ScriptedUpstream) -> None:
    with server(scripted_upstream, api_keys=[KEY_1]) as live, httpx.Client(base_url=root(live), timeout=10) as c:
        for params, headers in (({}, {}), ({"key": "sk-wrong"}, {}), ({}, {"Authorization": "Bearer sk-wrong"})):
            page = c.get("/dashboard", params=params, headers=headers)
            assert page.status_code == 401 and '<input type="password" name="key"' in page.text
            assert page.headers["cache-control"] == "no-store"
            assert "sk-wrong" not in page.text
        assert c.get("/dashboard/data").json()["error"]["code"] == "invalid_api_key"
        assert c.get("/dashboard/data", params={"key": KEY_1}).status_code == 401  # data: header only
        assert c.get("/dashboard/data", headers={"Authorization": f"Bearer {KEY_1}"}).status_code == 200
        for bad in ("nan", "-5", "1e9", "soon"):
            refused = c.get("/dashboard/data", params={"window_s": bad}, headers={"Authorization": f"Bearer {KEY_1}"})
            assert refused.status_code == 400 and refused.json()["error"]["param"] == "window_s"

        first, second = (c.get("/dashboard", params={"key": KEY_1}) for _ in range(2))
        assert first.status_code == 200 and first.headers["content-type"].startswith("text/html")
        assert KEY_1 not in first.text  # the page never echoes the key: its script reads it from the address
        policy = first.headers["content-security-policy"]
        nonce = re.search(r"script-src 'nonce-([^']+)'", policy).group(1)  # type: ignore[union-attr]
        assert f'<script nonce="{nonce}">' in first.text and f'<style nonce="{nonce}">' in first.text
        assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "unsafe" not in policy
        assert "frame-ancestors 'none'" in policy and first.headers["x-frame-options"] == "DENY"
        assert first.headers["cache-control"] == "no-store" and first.headers["referrer-policy"] == "no-referrer"
        assert nonce not in second.headers["content-security-policy"]  # a fresh nonce per response
        assert "{{NONCE}}" not in first.text and "http://" not in first.text.replace("http://www.w3.org", "")
        assert c.get("/dashboard", headers={"Authorization": f"Bearer {KEY_1}"}).status_code == 200


def test_an_admin_key_replaces_the_api_keys_for_the_dashboard(scripted_upstream: ScriptedUpstream) -> None:
    with server(scripted_upstream, api_keys=[KEY_1], admin_key=ADMIN) as live, \
            httpx.Client(base_url=root(live), timeout=10) as c:
        assert c.get("/dashboard", params={"key": KEY_1}).status_code == 401
        assert c.get("/dashboard/data", headers={"Authorization": f"Bearer {KEY_1}"}).status_code == 401
        assert c.get("/dashboard", params={"key": ADMIN}).status_code == 200
        assert c.get("/dashboard/data", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
        assert chat(live.base_url, ADMIN).status_code == 401  # and it is no API key


def test_without_keys_the_dashboard_is_open_and_it_can_be_turned_off(scripted_upstream: ScriptedUpstream) -> None:
    with server(scripted_upstream) as live:
        assert httpx.get(f"{root(live)}/dashboard", timeout=10).status_code == 200
        assert httpx.get(f"{root(live)}/dashboard/data", timeout=10).status_code == 200
    with server(scripted_upstream, dashboard=False) as live:
        assert httpx.get(f"{root(live)}/dashboard", timeout=10).status_code == 404
        assert httpx.get(f"{root(live)}/dashboard/data", timeout=10).status_code == 404


def test_alerts_fire_to_the_log_the_webhook_and_the_dashboard(scripted_upstream: ScriptedUpstream,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    rules = [{"name": "errors", "kind": "error_rate", "window_s": 60, "threshold": 0.3, "min_requests": 2},
             {"name": "long-prompt", "kind": "prompt_length", "threshold": 5, "window_s": 60}]
    with WebhookReceiver(fail_first=1) as receiver, \
            server(scripted_upstream, alerts=rules, alert_webhook_url=receiver.url, alert_eval_interval_s=0.1) as live:
        assert chat(live.base_url, None, user="jane.doe@example.org").status_code == 200
        assert chat(live.base_url, None, "fails-503").status_code >= 500
        bodies = receiver.wait_bodies(2, timeout_s=15)  # the first try was refused: retried
        firing = httpx.get(f"{root(live)}/dashboard/data", timeout=10).json()["alerts"]["firing"]
    assert sorted((b["alert"], b["state"]) for b in bodies) == [("errors", "firing"), ("long-prompt", "firing")]
    errors = next(b for b in bodies if b["alert"] == "errors")
    assert errors["value"] == 0.5 and errors["kind"] == "error_rate" and errors["requests"] == 2
    assert {a["alert"] for a in firing} == {"errors", "long-prompt"}
    logged = [r.getMessage() for r in caplog.records if r.name == "unimodel.alerts"]
    assert any(line.startswith("alert=errors kind=error_rate state=firing") for line in logged)
    assert not any("example.org" in line or "s3cret" in line for line in logged)


def test_a_hanging_webhook_never_slows_requests(scripted_upstream: ScriptedUpstream) -> None:
    rules = [{"name": f"long-prompt-{i}", "kind": "prompt_length", "threshold": 1, "window_s": 0.3}
             for i in range(5)]
    with WebhookReceiver(hang=True) as receiver, \
            server(scripted_upstream, alerts=rules, alert_webhook_url=receiver.url, alert_eval_interval_s=0.05) as live:
        took = []
        for _ in range(5):  # every request fires five alerts, that resolve between requests
            started = time.monotonic()
            assert chat(live.base_url, None, "raw-plain").status_code == 200
            took.append(time.monotonic() - started)
            time.sleep(0.4)
        alerts = live.app.state.alerts
        assert receiver.attempts >= 1 and not receiver.bodies  # the receiver still holds its first POST
        assert alerts.sender.pending <= 100 and alerts.sender.delivered == 0
        assert len(alerts.events) >= 45  # 5 × 5 firings, and (all but the last five) their resolutions
    assert max(took) < 2.0, took  # a webhook try may hang for 3 s; no request waited on one
