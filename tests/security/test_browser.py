"""A web page must not drive the server (shield item 12): the Host allowlist (DNS rebinding), JSON bodies only
(415), and no cross-origin browser request unless ``--cors-origins`` allows its origin.

Over real sockets (a live uvicorn server in front of an engine that counts the requests it is given), then the
middleware's own rules in process, then in real headless Chromium: a page of another origin (another loopback
port, reached by another host name) tries every ``fetch`` a page can make without asking first, and one with
JSON; a page whose name was re-pointed at the server (``--host-resolver-rules``, as DNS rebinding does) tries
the same origin's API. No chat request reaches the engine; a same-origin page, the control, does reach it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.support.browser import Chromium, find_chromium
from tests.support.fake_engine import InMemoryEngine
from tests.support.live_server import LiveServer
from tests.support.serve_cli import serve_settings
from unimodel.compose import allowed_hosts
from unimodel.config import Settings
from unimodel.engines.base import GenerationRequest
from unimodel.errors import ConfigError
from unimodel.protocol.events import ContentDelta, Event, Finish, Usage
from unimodel.server.middleware import AllowedHostsMiddleware, CrossOriginMiddleware, host_name

pytestmark = pytest.mark.slow

KEY = "sk-browser-test-key"
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
JSON = {"Content-Type": "application/json"}
EVIL = "http://evil.test:4444"


class Counting(InMemoryEngine):
    """Answers "ok" and counts the requests it was given."""

    kind = "counting"

    def __init__(self) -> None:
        self.calls = 0

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self.calls += 1
        yield ContentDelta("ok")
        yield Usage(1, 1)
        yield Finish("stop")


class Seen:
    """Outermost middleware: the method, path, status and response headers of every request the server got."""

    def __init__(self, app: ASGIApp, log: list[tuple[str, str, int, dict[str, str]]]) -> None:
        self.app, self.log = app, log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in message.get("headers", [])}
                self.log.append((scope["method"], scope["path"], message["status"], headers))
            await send(message)

        await self.app(scope, receive, record)


def settings(**kw: Any) -> Settings:
    return Settings(engine="upstream", upstream="http://127.0.0.1:9/v1", request_log=False, retries=0, **kw)


class Server:
    def __init__(self, **kw: Any) -> None:
        self.engine = Counting()
        self.seen: list[tuple[str, str, int, dict[str, str]]] = []
        self.live = LiveServer(settings(**kw), self.engine)
        self.live.app.add_middleware(Seen, log=self.seen)
        self.port = self.live.port
        self.url = f"http://127.0.0.1:{self.port}"

    def post(self, **headers: str) -> httpx.Response:
        """The chat request ``BODY``, with these headers."""
        return httpx.post(f"{self.url}/v1/chat/completions", content=BODY, headers=headers, timeout=20)


@pytest.fixture(scope="module")
def keyless() -> Iterator[Server]:
    server = Server()
    with server.live:
        yield server


@pytest.fixture(scope="module")
def keyed() -> Iterator[Server]:
    server = Server(api_keys=[KEY])
    with server.live:
        yield server


def refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code and error["message"]


def no_cors(response: httpx.Response) -> bool:
    return not any(k.lower().startswith("access-control-") for k in response.headers)


# ---- the Host allowlist ---------------------------------------------------------------------------------------


def test_a_server_without_keys_refuses_a_rebound_host_name(keyless: Server) -> None:
    before = keyless.engine.calls
    for host in ("rebind.test", f"rebind.test:{keyless.port}", "127.0.0.1.nip.io", "localhost.evil.test", "",
                 "[::2]", "127.0.0.1:1:2"):
        refused(keyless.post(**JSON, Host=host), 421, "host_not_allowed")
        for path in ("/v1/models", "/dashboard", "/dashboard/data", "/metrics", "/health"):
            refused(httpx.get(keyless.url + path, headers={"Host": host}, timeout=20), 421, "host_not_allowed")
    assert keyless.engine.calls == before
    for host in (f"127.0.0.1:{keyless.port}", f"localhost:{keyless.port}", "LOCALHOST.", f"[::1]:{keyless.port}",
                 "[0:0::1]"):
        assert keyless.post(**JSON, Host=host).status_code == 200, host
    assert keyless.engine.calls == before + 5


def test_the_host_allowlist_is_the_loopback_names_the_bind_address_and_the_flag() -> None:
    loopback = ("localhost", "127.0.0.1", "[::1]")
    assert allowed_hosts(settings()) == loopback
    assert allowed_hosts(settings(host="0.0.0.0")) == loopback
    assert allowed_hosts(settings(host="::")) == loopback
    assert allowed_hosts(settings(host="10.1.2.3")) == (*loopback, "10.1.2.3")
    assert allowed_hosts(settings(host="fd00::1")) == (*loopback, "[fd00::1]")
    assert allowed_hosts(settings(host="0.0.0.0", allowed_hosts=["GPU-Box.", "*.corp.example"])) == (
        *loopback, "gpu-box", "*.corp.example")
    # with keys: any host (a key stops a rebound page; behind a proxy the Host is the proxy's), unless the flag is set
    assert allowed_hosts(settings(api_keys=[KEY])) is None
    assert allowed_hosts(settings(api_keys=[KEY], allowed_hosts=["api.example.com"])) == (*loopback, "api.example.com")
    assert allowed_hosts(settings(allowed_hosts=["*"])) is None
    for bad in ("api.example.com:8000", "http://api.example.com", "a/b", ""):
        with pytest.raises(ValueError):
            settings(allowed_hosts=[bad])
    with pytest.raises(ConfigError):
        allowed_hosts(settings(host="not a host"))


def test_the_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = serve_settings(monkeypatch, "--engine", "upstream", "--upstream", "http://127.0.0.1:9/v1",
                            "--allowed-hosts", "gpu-box", "--allowed-hosts", "*.corp.example",
                            "--cors-origins", "https://app.example.com/", "--no-json-only")
    assert chosen.allowed_hosts == ["gpu-box", "*.corp.example"]
    assert chosen.cors_origins == ["https://app.example.com"] and chosen.json_only is False
    defaults = serve_settings(monkeypatch, "--engine", "upstream", "--upstream", "http://127.0.0.1:9/v1")
    assert defaults.allowed_hosts == [] and defaults.cors_origins == [] and defaults.json_only is True
    with pytest.raises(ConfigError):
        serve_settings(monkeypatch, "--cors-origins", "app.example.com")


def test_allowed_hosts_and_their_subdomains_are_answered() -> None:
    server = Server(host="0.0.0.0", allowed_hosts=["gpu-box", "*.corp.example"])
    with server.live:
        for host in ("gpu-box", "gpu-box:8000", "a.corp.example", "a.b.corp.example:80", "localhost"):
            assert server.post(**JSON, Host=host).status_code == 200, host
        for host in ("corp.example", "xcorp.example", "gpu-box.evil.test", "10.0.0.1"):
            refused(server.post(**JSON, Host=host), 421, "host_not_allowed")
    assert server.engine.calls == 5


def test_with_keys_any_host_is_answered_unless_the_flag_lists_them(keyed: Server) -> None:
    auth = {"Authorization": f"Bearer {KEY}", **JSON}
    assert keyed.post(**auth, Host="api.example.com").status_code == 200
    server = Server(api_keys=[KEY], allowed_hosts=["api.example.com"])
    with server.live:
        assert server.post(**auth, Host="api.example.com").status_code == 200
        refused(server.post(**auth, Host="rebind.test"), 421, "host_not_allowed")


# ---- JSON bodies only -----------------------------------------------------------------------------------------


def test_a_server_without_keys_takes_only_json_bodies(keyless: Server) -> None:
    before = keyless.engine.calls
    for content_type in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                         "multipart/form-data; boundary=x", "application/jsonx", "text/json", None):
        headers = {} if content_type is None else {"Content-Type": content_type}
        refused(keyless.post(**headers), 415, "unsupported_media_type")
    assert keyless.engine.calls == before
    for content_type in ("application/json", "application/json; charset=utf-8", "Application/JSON",
                         "application/vnd.openai+json"):
        assert keyless.post(**{"Content-Type": content_type}).status_code == 200, content_type
    assert keyless.engine.calls == before + 4


def test_with_keys_a_declared_type_must_be_json_and_none_is_read_as_json(keyed: Server) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    before = keyed.engine.calls
    refused(keyed.post(**auth, **{"Content-Type": "text/plain"}), 415, "unsupported_media_type")
    refused(keyed.post(**{"Content-Type": "text/plain"}), 401, "invalid_api_key")  # no key: the key is asked first
    assert keyed.post(**auth).status_code == 200  # no Content-Type: as FastAPI servers (vLLM) read it
    assert keyed.engine.calls == before + 1


def test_no_json_only_takes_any_type() -> None:
    server = Server(json_only=False)
    with server.live:
        assert server.post(**{"Content-Type": "text/plain"}).status_code == 200
    assert server.engine.calls == 1


# ---- cross-origin requests ------------------------------------------------------------------------------------


def test_a_page_of_another_origin_is_refused_and_its_preflight_gets_no_cors_headers(keyless: Server) -> None:
    before = keyless.engine.calls
    cross = {"Origin": EVIL, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}
    response = keyless.post(**JSON, **cross)
    refused(response, 403, "cross_origin_forbidden")
    assert no_cors(response)
    preflight = httpx.options(f"{keyless.url}/v1/chat/completions", timeout=20, headers={
        **cross, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 403 and no_cors(preflight)
    # without Sec-Fetch-* (an older browser): Origin alone; a same-site page (another port of localhost) too
    refused(keyless.post(**JSON, Origin=EVIL), 403, "cross_origin_forbidden")
    refused(keyless.post(**JSON, Origin="null"), 403, "cross_origin_forbidden")
    refused(keyless.post(**JSON, Origin="http://127.0.0.1:1", **{"Sec-Fetch-Site": "same-site"}), 403,
            "cross_origin_forbidden")
    # a cross-site <img> or no-cors GET of the API: refused; a link followed to the dashboard: a page, shown
    refused(httpx.get(f"{keyless.url}/v1/models", timeout=20, headers={
        "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}), 403, "cross_origin_forbidden")
    navigate = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    assert httpx.get(f"{keyless.url}/dashboard", timeout=20, headers=navigate).status_code == 200
    refused(keyless.post(**JSON, **navigate, Origin=EVIL), 403, "cross_origin_forbidden")  # a form posted across
    assert keyless.engine.calls == before
    # the same origin, and clients that are not browsers, are served
    same = keyless.post(**JSON, Origin=keyless.url, **{"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"})
    assert same.status_code == 200 and no_cors(same)
    assert keyless.post(**JSON, Origin=keyless.url).status_code == 200
    assert keyless.post(**JSON).status_code == 200
    assert keyless.engine.calls == before + 3


def test_cors_origins_lets_one_origin_call_the_api(keyless: Server) -> None:
    app = "http://app.test:3000"
    server = Server(cors_origins=[app + "/"], api_keys=[KEY])
    with server.live:
        preflight = httpx.options(f"{server.url}/v1/chat/completions", timeout=20, headers={
            "Origin": app, "Sec-Fetch-Site": "cross-site", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == app
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        answer = server.post(**JSON, Origin=app, Authorization=f"Bearer {KEY}", **{"Sec-Fetch-Site": "cross-site"})
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == app
        assert "x-request-id" in answer.headers["access-control-expose-headers"]
        other = server.post(**JSON, Origin=EVIL, Authorization=f"Bearer {KEY}", **{"Sec-Fetch-Site": "cross-site"})
        refused(other, 403, "cross_origin_forbidden")
        assert no_cors(other)
    assert server.engine.calls == 1


# ---- the middleware's rules, in process ----------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "name"), [
    (b"127.0.0.1:8000", "127.0.0.1"), (b"LocalHost.", "localhost"), (b"[::1]:8000", "[::1]"),
    (b"[0:0:0:0:0:0:0:1]", "[::1]"), (b"[::1", ""), (b"[nope]", ""), (b"a:1:2", ""), (b"", ""),
    (b"evil.test:8000", "evil.test"),
])
def test_host_names_are_read_as_the_allowlist_writes_them(raw: bytes, name: str) -> None:
    assert host_name(raw) == name


async def _status(app: ASGIApp, method: str, headers: dict[str, str]) -> int:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": "/", "headers": [
        (k.lower().encode(), v.encode()) for k, v in headers.items()]}
    await app(scope, receive, send)
    return int(sent[0]["status"])


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


CROSS = {"Host": "127.0.0.1:8000", "Origin": EVIL, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "cors"}


@pytest.mark.parametrize(("method", "headers", "allowed", "status"), [
    ("POST", {"Host": "127.0.0.1:8000"}, (), 200),  # an SDK, curl: no browser headers
    ("POST", CROSS, (), 403),
    ("OPTIONS", CROSS, (), 403),
    ("POST", CROSS, (EVIL,), 200),
    ("POST", CROSS, ("*",), 200),
    ("POST", {**CROSS, "Sec-Fetch-Site": "same-origin"}, (), 200),
    ("GET", {"Host": "x", "Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"}, (), 200),  # typed in
    ("GET", {"Host": "x", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}, (), 200),  # a link
    ("POST", {"Host": "x", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}, (), 403),  # a form
    ("GET", {"Host": "x", "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}, (), 403),  # an <img>
    ("POST", {"Host": "api.example.com", "Origin": "https://api.example.com"}, (), 200),  # behind a TLS proxy
    ("POST", {"Host": "api.example.com:443", "Origin": "https://api.example.com"}, (), 200),
    ("POST", {"Host": "api.example.com", "Origin": "https://api.example.com:8443"}, (), 403),
    ("POST", {"Host": "127.0.0.1:8000", "Origin": "http://127.0.0.1:8001"}, (), 403),  # another port
    ("POST", {"Host": "127.0.0.1:8000", "Origin": "null"}, (), 403),  # a sandboxed frame, a data: page
])
async def test_the_cross_origin_rule(method: str, headers: dict[str, str], allowed: tuple[str, ...],
                                     status: int) -> None:
    assert await _status(CrossOriginMiddleware(_ok, allowed), method, headers) == status


async def test_the_host_rule_comes_before_the_app_and_in_the_error_shape() -> None:
    app = AllowedHostsMiddleware(_ok, ("localhost", "*.corp.example"))
    assert await _status(app, "GET", {"Host": "localhost:1"}) == 200
    assert await _status(app, "GET", {"Host": "a.corp.example"}) == 200
    assert await _status(app, "GET", {"Host": "corp.example"}) == 421
    assert await _status(app, "GET", {}) == 421  # HTTP/1.0 without a Host


# ---- in Chromium ----------------------------------------------------------------------------------------------

ATTACKER_PAGE = b"<!doctype html><html><head><title>another site</title></head><body>hello</body></html>"

#: every way a page can POST to another origin; each result is what the page could read
TRY_EVERYTHING = """(async () => {
  const url = %s;
  const body = %s;
  const tries = {
    "text/plain": {method: "POST", headers: {"Content-Type": "text/plain"}, body},
    "string body": {method: "POST", body},
    "untyped blob": {method: "POST", body: new Blob([body])},
    "form": {method: "POST", body: new URLSearchParams({q: body})},
    "multipart": {method: "POST", body: (() => { const f = new FormData(); f.append("q", body); return f; })()},
    "no-cors text/plain": {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body},
    "application/json": {method: "POST", headers: {"Content-Type": "application/json"}, body},
  };
  const out = {};
  for (const [name, init] of Object.entries(tries)) {
    try {
      const r = await fetch(url, init);
      out[name] = r.type === "opaque" ? "opaque" : r.status + " " + (await r.text()).slice(0, 500);
    } catch (e) {
      out[name] = "failed: " + e.message;
    }
  }
  return out;
})()"""

SAME_ORIGIN_POST = """(async () => {
  try {
    const r = await fetch("/v1/chat/completions", {method: "POST", headers: {"Content-Type": "application/json"},
                                                  body: %s});
    return r.status + " " + (await r.text()).slice(0, 300);
  } catch (e) {
    return "failed: " + e.message;
  }
})()"""


class PageServer:
    """Another site: one static page on a loopback port of its own."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(ATTACKER_PAGE)))
                self.end_headers()
                self.wfile.write(ATTACKER_PAGE)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "PageServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


def _chromium() -> str:
    executable = find_chromium()
    if executable is None:
        pytest.fail("Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it): "
                    "the browser tests need it")
    return executable


def _posts(seen: list[tuple[str, str, int, dict[str, str]]], method: str) -> list[tuple[int, dict[str, str]]]:
    return [(status, headers) for m, path, status, headers in seen
            if m == method and path == "/v1/chat/completions"]


def test_in_chromium_a_page_of_another_site_or_a_rebound_name_never_reaches_the_engine() -> None:
    executable = _chromium()
    server = Server()
    body = json.dumps(BODY.decode())
    rules = "MAP attacker.test 127.0.0.1, MAP rebind.test 127.0.0.1"
    with server.live, PageServer() as other, \
            Chromium(executable, flags=(f"--host-resolver-rules={rules}",)) as browser:
        # 1. a page of another site (another port, another name) tries every POST a page can make
        page = browser.new_page()
        page.navigate(f"http://attacker.test:{other.port}/")
        assert page.evaluate("document.title") == "another site"
        results = page.evaluate(TRY_EVERYTHING % (json.dumps(server.url + "/v1/chat/completions"), body))
        assert set(results) == {"text/plain", "string body", "untyped blob", "form", "multipart",
                                "no-cors text/plain", "application/json"}
        assert server.engine.calls == 0, json.dumps(results)
        assert all(r == "opaque" or r.startswith("failed") for r in results.values()), json.dumps(results)  # unread
        # the requests a page may send unasked did arrive, and were refused; the JSON one was only asked about
        posts = _posts(server.seen, "POST")
        assert len(posts) == 6 and all(status == 403 for status, _ in posts), posts
        preflights = _posts(server.seen, "OPTIONS")
        assert preflights and all(status == 403 and not any(h.startswith("access-control-") for h in headers)
                                  for status, headers in preflights), preflights

        # 2. DNS rebinding: a page whose name now leads to the server is, to the browser, the server's own origin
        rebound = browser.new_page()
        rebound.navigate(f"http://rebind.test:{server.port}/health")
        assert "host_not_allowed" in rebound.evaluate("document.body.innerText")
        answer = rebound.evaluate(SAME_ORIGIN_POST % body)
        assert answer.startswith("421 ") and "host_not_allowed" in answer, answer
        models = rebound.evaluate("fetch('/v1/models').then(r => r.status + ' ' + r.statusText)")
        assert models.startswith("421"), models
        assert server.engine.calls == 0

        # the control: the server's own page (its real name) does reach the engine, with the same fetch
        own = browser.new_page()
        own.navigate(f"http://127.0.0.1:{server.port}/health")
        answer = own.evaluate(SAME_ORIGIN_POST % body)
        assert answer.startswith("200 ") and '"ok"' in answer, answer
        assert server.engine.calls == 1

        # 3. the JSON rule holds on its own: an operator who opens CORS to every origin (no keys) still gets no
        # request a page can send unasked; only the JSON one, after a preflight the server now grants
        with Server(cors_origins=["*"]).live as open_cors:
            open_engine = open_cors.engine
            assert isinstance(open_engine, Counting)
            results = page.evaluate(TRY_EVERYTHING % (json.dumps(
                f"http://127.0.0.1:{open_cors.port}/v1/chat/completions"), body))
            assert results["application/json"].startswith("200 "), results
            assert all(results[name].startswith("415 ") and "unsupported_media_type" in results[name]
                       for name in ("text/plain", "string body", "untyped blob", "form", "multipart")), results
            assert open_engine.calls == 1, results
