"""Identity and exposure, on real servers: one rule for a request with two ``Authorization`` headers, plain
``--api-key`` names that do not move when a key is removed, the server's own request ids (a client's
``X-Request-Id`` is a label), and what ``/openapi.json`` and ``/metrics`` show to whom."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.live_server import LiveServer
from tests.support.redis_server import RedisServer
from tests.support.scripted_upstream import ScriptedUpstream
from unimodel.compose import build_engine
from unimodel.config import Settings
from unimodel.gateway.keys import plain_key_name
from unimodel.telemetry.request_log import RequestLog

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

K1, K2 = "sk-identity-one-0123456789", "sk-identity-two-0123456789"
ADMIN, SCRAPE = "sk-identity-admin-012345", "sk-identity-scrape-01234"
BODY = {"model": "raw-plain", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}


def server(upstream: ScriptedUpstream, **settings: Any) -> LiveServer:
    s = Settings(**{"engine": "upstream", "upstream": upstream.base_url, "retries": 0, "request_log": False,
                    **settings})
    return LiveServer(s, build_engine(s))


def root(live: LiveServer) -> str:
    return f"http://127.0.0.1:{live.port}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# ---- two Authorization headers ------------------------------------------------------------------------------

def test_two_authorization_headers_get_the_same_400_on_every_route(scripted_upstream: ScriptedUpstream) -> None:
    """Before: chat (a dict of the ASGI headers) took the last, the models, dashboard and metrics routes
    (Starlette's headers) the first; a good key beside a wrong one passed on some routes and not others."""
    with server(scripted_upstream, api_keys=[K1], metrics_key=SCRAPE) as live, \
            httpx.Client(base_url=root(live), timeout=20) as client:
        def send(method: str, path: str, *keys: str) -> httpx.Response:
            headers = [("Authorization", f"Bearer {key}") for key in keys]
            return client.request(method, path, headers=headers, json=BODY if method == "POST" else None)

        routes = [("POST", "/v1/chat/completions", K1), ("GET", "/v1/models", K1), ("GET", "/dashboard/data", K1),
                  ("GET", "/dashboard", K1), ("GET", "/metrics", SCRAPE)]
        for method, path, good in routes:
            assert send(method, path, good).status_code == 200, path  # one header: served
            for pair in ((good, "sk-wrong"), ("sk-wrong", good), (good, good)):
                resp = send(method, path, *pair)
                assert resp.status_code == 400, (path, pair, resp.status_code)
                error = resp.json()["error"]
                assert (error["type"], error["code"], error["param"]) == (
                    "invalid_request_error", "invalid_value", "Authorization"), path
                assert resp.headers.get("x-request-id")


def test_two_x_api_key_headers_get_a_400(scripted_upstream: ScriptedUpstream) -> None:
    with server(scripted_upstream, api_keys=[K1]) as live, httpx.Client(base_url=root(live), timeout=20) as client:
        one = client.post("/v1/chat/completions", json=BODY, headers=[("x-api-key", K1)])
        assert one.status_code == 200, one.text
        for pair in ((K1, "sk-wrong"), ("sk-wrong", K1)):
            resp = client.post("/v1/chat/completions", json=BODY, headers=[("x-api-key", k) for k in pair])
            assert resp.status_code == 400, resp.text
            assert resp.json()["error"]["param"] == "x-api-key"


# ---- plain keys' names ----------------------------------------------------------------------------------------

@pytest.fixture()
def prefix() -> str:
    return f"identity-{uuid.uuid4().hex[:8]}:"


def test_removing_the_first_key_keeps_the_seconds_name_and_its_limits_bucket(
        scripted_upstream: ScriptedUpstream, redis_server: RedisServer, prefix: str) -> None:
    """Two replicas over one Redis, before and after ``--api-key K1`` is removed: K2 keeps its name, so its
    bucket (``--rpm 1``, spent on the first server) is still spent on the second. Before, K2 became ``key-1``,
    K1's old name, and got K1's untouched bucket (and would have got its idempotent responses)."""
    common = {"redis": redis_server.url, "redis_prefix": prefix, "rpm": 1, "idempotency": False}
    with server(scripted_upstream, api_keys=[K1, K2], **common) as before, \
            server(scripted_upstream, api_keys=[K2], **common) as after:
        assert httpx.post(f"{root(before)}/v1/chat/completions", json=BODY, headers=bearer(K2),
                          timeout=20).status_code == 200
        refused = httpx.post(f"{root(after)}/v1/chat/completions", json=BODY, headers=bearer(K2), timeout=20)
        assert refused.status_code == 429, refused.text  # the same bucket: one request a minute, already spent
        names_before = before.app.state.dashboard.ring.plain_names
        names_after = after.app.state.dashboard.ring.plain_names
    assert names_after == [names_before[1]] == [plain_key_name(K2)]
    assert re.fullmatch(r"key-[0-9a-f]{8}", names_after[0]) and K2 not in names_after[0]


def test_removing_the_first_key_keeps_the_seconds_idempotent_responses(
        scripted_upstream: ScriptedUpstream, redis_server: RedisServer, prefix: str) -> None:
    common = {"redis": redis_server.url, "redis_prefix": prefix}
    with server(scripted_upstream, api_keys=[K1, K2], **common) as before, \
            server(scripted_upstream, api_keys=[K2], **common) as after:
        headers = {**bearer(K2), "Idempotency-Key": "order-7"}
        first = httpx.post(f"{root(before)}/v1/chat/completions", json=BODY, headers=headers, timeout=20)
        again = httpx.post(f"{root(after)}/v1/chat/completions", json=BODY, headers=headers, timeout=20)
    assert first.status_code == again.status_code == 200
    assert again.headers.get("idempotent-replayed") == "true" and again.json()["id"] == first.json()["id"]


# ---- request ids ----------------------------------------------------------------------------------------------

def test_a_client_request_id_is_a_label_never_our_id(scripted_upstream: ScriptedUpstream, tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Two keys send the same ``X-Request-Id``: each request keeps its own completion id, log row and
    idempotent response; the client's id is echoed and kept beside ours. Before, it became the completion id
    (``chatcmpl-shared-id`` for both keys) and the log's request_id."""
    caplog.set_level(logging.INFO, logger="unimodel.access")
    with server(scripted_upstream, api_keys=[K1, K2], request_log=True, data_dir=tmp_path) as live, \
            httpx.Client(base_url=root(live), timeout=20) as client:
        shared = {"X-Request-Id": "shared-id"}
        one = client.post("/v1/chat/completions", json=BODY, headers={**bearer(K1), **shared,
                                                                      "Idempotency-Key": "k"})
        replay = client.post("/v1/chat/completions", json=BODY, headers={**bearer(K1), **shared,
                                                                         "Idempotency-Key": "k"})
        two = client.post("/v1/chat/completions", json=BODY, headers={**bearer(K2), **shared})
        three = client.post("/v1/chat/completions", json={**BODY, "stream": True}, headers={**bearer(K2), **shared})
        bare = client.post("/v1/chat/completions", json=BODY, headers=bearer(K2))
        refused = client.post("/v1/chat/completions", json=BODY, headers={"Authorization": "Bearer no", **shared})
        log = live.app.state.request_log
        assert isinstance(log, RequestLog) and log.writer.wait_idle(20)
        rows = log.store.rows(newest_first=False)
    for resp in (one, replay, two, three, bare):
        assert resp.status_code == 200
    assert refused.status_code == 401
    for resp in (one, replay, two, three, refused):
        assert resp.headers["x-request-id"] == "shared-id"  # echoed, as before: a client correlates by it
    ids = [one.json()["id"], two.json()["id"], re.search(r'"id":"(chatcmpl-[^"]+)"', three.text).group(1),
           bare.json()["id"]]
    assert "chatcmpl-shared-id" not in ids and len(set(ids)) == 4
    assert replay.json()["id"] == ids[0] and replay.headers["idempotent-replayed"] == "true"
    assert re.fullmatch(r"[0-9a-f]{32}", bare.headers["x-request-id"])  # no id sent: ours
    assert bare.json()["id"] == "chatcmpl-" + bare.headers["x-request-id"]

    assert len(rows) == 6 and len({r["request_id"] for r in rows}) == 6  # ours: unique, whatever clients sent
    assert [r["client_request_id"] for r in rows] == ["shared-id"] * 4 + [None, "shared-id"]
    assert ["chatcmpl-" + r["request_id"] for r in rows[2:5]] == ids[1:]
    assert [r["key_name"] for r in rows] == [plain_key_name(K1)] * 2 + [plain_key_name(K2)] * 3 + [None]
    assert caplog.text.count("client_request_id=shared-id") == 5


# ---- what the server shows about itself -----------------------------------------------------------------------

def test_there_is_no_openapi_document(scripted_upstream: ScriptedUpstream) -> None:
    with ExitStack() as stack:
        for settings in ({}, {"api_keys": [K1], "admin_key": ADMIN}):
            live = stack.enter_context(server(scripted_upstream, **settings))
            for headers in ({}, bearer(K1), bearer(ADMIN)):
                for path in ("/openapi.json", "/docs", "/redoc"):
                    assert httpx.get(root(live) + path, headers=headers, timeout=10).status_code == 404, path


@pytest.fixture()
def scrape_targets(scripted_upstream: ScriptedUpstream) -> Iterator[dict[str, LiveServer]]:
    with server(scripted_upstream) as open_, \
            server(scripted_upstream, api_keys=[K1]) as keyed, \
            server(scripted_upstream, api_keys=[K1], admin_key=ADMIN) as admin, \
            server(scripted_upstream, api_keys=[K1], admin_key=ADMIN, metrics_key=SCRAPE) as scrape:
        yield {"open": open_, "keyed": keyed, "admin": admin, "scrape": scrape}


def test_metrics_need_an_operator_key_once_the_api_has_keys(scrape_targets: dict[str, LiveServer]) -> None:
    def status(name: str, **headers: str) -> int:
        return httpx.get(root(scrape_targets[name]) + "/metrics", headers=headers, timeout=10).status_code

    # API keys and no operator key: closed to everyone (an API key is not an operator's), loopback included
    assert (status("keyed"), status("keyed", **bearer(K1))) == (403, 403)
    # the admin key opens it; the metrics key too, when set
    assert (status("admin"), status("admin", **bearer(K1)), status("admin", **bearer(ADMIN))) == (401, 401, 200)
    assert [status("scrape", **h) for h in ({}, bearer(K1), bearer(SCRAPE), bearer(ADMIN))] == [401, 401, 200, 200]


def test_metrics_without_any_key_answer_loopback_only(scrape_targets: dict[str, LiveServer]) -> None:
    url = root(scrape_targets["open"]) + "/metrics"
    assert httpx.get(url, timeout=10).status_code == 200  # a Prometheus on this host
    # a local reverse proxy forwarding a remote client (uvicorn trusts X-Forwarded-For from loopback)
    forwarded = httpx.get(url, headers={"X-Forwarded-For": "203.0.113.7"}, timeout=10)
    assert forwarded.status_code == 403 and "--metrics-key" in forwarded.json()["error"]["message"]
    assert httpx.get(url, headers={"X-Forwarded-For": "::1"}, timeout=10).status_code == 200
