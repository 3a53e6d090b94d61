"""What a request is charged, and what it costs the server before the limits refuse it (real servers, real
sockets):

* ``reasoning_effort: low`` with ``thinking_budget: 1000000`` ran the model at ``high`` with that budget while
  it counted as ``low``: a key with ``high_reasoning_rpm: 0`` was served, and a route's
  ``max_reasoning_effort`` did not cap the budget. Now a request is charged at the level it runs at;
* the images of a request were fetched and decoded before the limits: refused requests still downloaded and
  decoded (memory, CPU, another key's latency). Now the limits come first, and image work is bounded
  server-wide (a slot, a bounded wait, then 503);
* tokens per minute reserved only ``max_tokens``: ten long prompts with ``max_tokens: 1`` all passed a small
  limit. Now the prompt is reserved too;
* a request abandoned before its first token was charged nothing, and an abandoned stream left a log row with
  no token counts and no metric: now both are charged an estimate, which the log, the metrics and the limits
  read alike;
* a key over its rpm still had its 19 MiB body read and parsed before its 429. Now the key's rpm and in-flight
  cap are checked before the body is read.
"""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Optional

import httpx
import pytest

from tests.support.fake_engine import InMemoryEngine
from tests.support.live_server import LiveServer
from tests.support.asgi_counting import CountsBodyBytes
from unimodel.config import Settings
from unimodel.engines.base import GenerationRequest
from unimodel.gateway.images import ImagePolicyStage
from unimodel.gateway.keyhash import hash_key
from unimodel.gateway.policy import KeyPolicy
from unimodel.images.fetch import SafeImageFetcher
from unimodel.protocol.events import FLUSH, ContentDelta, Event, Finish, Usage
from unimodel.telemetry.request_log import RequestLog

pytestmark = pytest.mark.timeout(120)

MIB = 1024 * 1024


class Scripted(InMemoryEngine):
    """``chunks`` content deltas (a ``Flush`` and ``delay_s`` between two), then the usage (the prompt as four
    characters a token); ``before_first_s``: a wait before anything. Records what it was asked."""

    kind = "scripted"

    def __init__(self, chunks: int = 2, delay_s: float = 0.0, before_first_s: float = 0.0) -> None:
        self.chunks, self.delay_s, self.before_first_s = chunks, delay_s, before_first_s
        self.seen: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self.seen.append(request)
        if self.before_first_s:
            await asyncio.sleep(self.before_first_s)
        for i in range(self.chunks):
            if i:
                yield FLUSH
                await asyncio.sleep(self.delay_s)
            yield ContentDelta("word ")
        yield Usage(sum(len(m.text()) for m in request.messages) // 4, self.chunks)
        yield Finish("stop")


def key(name: str, secret: str, **policy: Any) -> KeyPolicy:
    return KeyPolicy(name=name, key_hash=hash_key(secret), **policy)


def server(engine: Scripted, tmp_path: Path, **settings: Any) -> LiveServer:
    return LiveServer(Settings(engine="upstream", upstream="http://127.0.0.1:9/v1", data_dir=tmp_path,
                               **settings), engine)


def client(live: LiveServer, secret: str, timeout: float = 20.0) -> httpx.Client:
    return httpx.Client(base_url=live.base_url, timeout=timeout, headers={"Authorization": f"Bearer {secret}"})


def body(content: Any = "hello", **fields: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}], **fields}


# ---- 3. a thinking budget is charged at the level it runs at ------------------------------------------------

def test_a_long_thinking_budget_is_charged_as_high_reasoning(tmp_path: Path) -> None:
    engine = Scripted()
    keys = [key("no-high", "sk-no-high-0001", high_reasoning_rpm=0), key("one-high", "sk-one-high-0002",
                                                                            high_reasoning_rpm=1)]
    with server(engine, tmp_path, keys=keys) as live:
        with client(live, "sk-no-high-0001") as c:
            bypass = c.post("/chat/completions", json=body(reasoning_effort="low", thinking_budget=1_000_000))
            assert bypass.status_code == 429, bypass.text  # was 200: the model ran at high for a million tokens
            assert bypass.json()["error"]["code"] == "rate_limit_exceeded"
            assert bypass.headers["x-should-retry"] == "false"
            assert not engine.seen
            for budget in (None, 1000, 1024):  # within low's own budget: low it is
                fields = {} if budget is None else {"thinking_budget": budget}
                ok = c.post("/chat/completions", json=body(reasoning_effort="low", **fields))
                assert ok.status_code == 200, (budget, ok.text)
            assert c.post("/chat/completions", json=body(reasoning_effort="medium",
                                                         thinking_budget=4096)).status_code == 200
            assert c.post("/chat/completions", json=body(reasoning_effort="medium",
                                                         thinking_budget=4097)).status_code == 429
        with client(live, "sk-one-high-0002") as c:
            first = c.post("/chat/completions", json=body(reasoning_effort="low", thinking_budget=1_000_000))
            assert first.status_code == 200
            assert "charged_effort=high" in first.headers["x-unimodel-reasoning"]
            assert first.json()["unimodel_reasoning"]["effort"] == "low"  # what was asked, still said
            assert engine.seen[-1].model_effort == "high" and engine.seen[-1].thinking_budget == 1_000_000
            spent = c.post("/chat/completions", json=body(reasoning_effort="high"))
            assert spent.status_code == 429  # the low-with-a-budget request spent the high-reasoning quota
            assert "for high reasoning" in spent.json()["error"]["message"]


def test_a_routes_max_reasoning_effort_caps_the_thinking_budget(tmp_path: Path) -> None:
    engine = Scripted()
    with server(engine, tmp_path, api_keys=["sk-route-0001"],
                routes={"capped": {"max_reasoning_effort": "low"}}) as live, client(live, "sk-route-0001") as c:
        refused = c.post("/chat/completions", json=body(route="capped", reasoning_effort="low",
                                                         thinking_budget=1_000_000))
        assert refused.status_code == 400, refused.text  # was 200, the model thinking a million tokens
        error = refused.json()["error"]
        assert error["param"] == "thinking_budget" and "'low'" in error["message"] and "1024" in error["message"]
        assert c.post("/chat/completions", json=body(route="capped", thinking_budget=1025,
                                                     reasoning_effort="low")).status_code == 400
        assert c.post("/chat/completions", json=body(route="capped", thinking_budget=1024,
                                                     reasoning_effort="low")).status_code == 200
        assert engine.seen[-1].thinking_budget == 1024
        assert c.post("/chat/completions", json=body(thinking_budget=1_000_000,  # the default route: no cap
                                                     reasoning_effort="low")).status_code == 200


# ---- 4. the limits come before any image work, which is bounded server-wide ---------------------------------

def png(size: tuple[int, int] = (32, 32)) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, "red").save(out, format="PNG")
    return out.getvalue()


@contextmanager
def image_server(delay_s: float = 0.0) -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server answering every GET with a PNG (after ``delay_s``); yields its base URL and the
    paths fetched."""
    data, fetched = png(), list[str]()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the http.server API)
            fetched.append(self.path)
            time.sleep(delay_s)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            return None

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", fetched
    finally:
        httpd.shutdown()
        httpd.server_close()


def allow_loopback_images(live: LiveServer) -> None:
    """The image stage's fetcher, allowed to reach the test's loopback server (never in a deployment)."""
    [stage] = [s for s in live.app.state.chat.pipeline.stages if isinstance(s, ImagePolicyStage)]
    stage.fetcher = SafeImageFetcher(allow_address=lambda _: True, timeout_s=10)


def with_images(*urls: str, **fields: Any) -> dict[str, Any]:
    parts = [{"type": "text", "text": "look"}, *({"type": "image_url", "image_url": {"url": u}} for u in urls)]
    return body(parts, **fields)


def test_refused_requests_never_fetch_or_decode_their_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import unimodel.gateway.images as images

    decoded: list[int] = []
    real = images.validate_image

    def counting(data: bytes, where: str, limits: Any) -> str:
        decoded.append(len(data))
        return real(data, where, limits)

    monkeypatch.setattr(images, "validate_image", counting)
    inline = "data:image/png;base64," + base64.b64encode(png()).decode()
    keys = [key("one-rpm", "sk-one-rpm-0001", rpm=1), key("no-high", "sk-no-high-0002", high_reasoning_rpm=0),
            key("small-tpm", "sk-small-tpm-03", tpm=500)]
    with image_server() as (base, fetched), server(Scripted(), tmp_path, keys=keys, allow_image_urls=True,
                                                   rate_limit_window_s=86400) as live:
        allow_loopback_images(live)
        with client(live, "sk-one-rpm-0001") as c:
            assert c.post("/chat/completions", json=with_images(f"{base}/a.png", inline)).status_code == 200
            assert len(fetched) == 1 and len(decoded) == 2
            for i in range(5):  # over its rpm: refused before the body is even read
                urls = [f"{base}/rpm-{i}-{j}.png" for j in range(8)]
                assert c.post("/chat/completions", json=with_images(*urls[:7], inline)).status_code == 429
        assert fetched == ["/a.png"] and len(decoded) == 2  # was: 35 more images fetched, 40 more decoded
        with client(live, "sk-no-high-0002") as c:  # refused by the second part: a quota of 0 for high reasoning
            answer = c.post("/chat/completions", json=with_images(f"{base}/hr.png", inline, reasoning_effort="high"))
            assert answer.status_code == 429, answer.text
        with client(live, "sk-small-tpm-03") as c:  # refused for tokens: an estimate beyond the bucket needs it
            # full, and the first one used 3 of its 500 (two images are estimated at 2 x 1400)
            assert c.post("/chat/completions", json=with_images(f"{base}/t1.png", max_tokens=1)).status_code == 200
            answer = c.post("/chat/completions", json=with_images(f"{base}/t2.png", inline, max_tokens=1))
            assert answer.status_code == 429, answer.text
        assert fetched == ["/a.png", "/t1.png"]  # was: every refused request's images fetched too
        assert len(decoded) == 3  # and decoded


def test_image_work_is_bounded_server_wide_with_a_bounded_wait(tmp_path: Path) -> None:
    with image_server(delay_s=1.5) as (base, fetched), \
            server(Scripted(), tmp_path, api_keys=["sk-img-0001", "sk-img-0002"], allow_image_urls=True,
                   image_max_in_flight=1, image_wait_s=0.2) as live:
        allow_loopback_images(live)

        def one(i: int) -> httpx.Response:
            with client(live, f"sk-img-000{i % 2 + 1}") as c:
                return c.post("/chat/completions", json=with_images(f"{base}/slow-{i}.png"))

        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(one, 0)
            deadline = time.monotonic() + 10
            while not fetched and time.monotonic() < deadline:  # the first holds the one slot
                time.sleep(0.01)
            busy = pool.submit(one, 1).result(timeout=30)
            assert first.result(timeout=30).status_code == 200
        assert busy.status_code == 503, busy.text  # another key waited 0.2 s for the slot, then was told to retry
        assert busy.json()["error"]["code"] == "images_busy" and busy.headers["retry-after"] == "1"
        assert fetched == ["/slow-0.png"]
        with client(live, "sk-img-0002") as c:  # the slot is free again
            assert c.post("/chat/completions", json=with_images(f"{base}/after.png")).status_code == 200


# ---- 5. the prompt is reserved, not only max_tokens ----------------------------------------------------------

def test_long_prompts_with_max_tokens_1_cannot_overrun_a_small_tpm(tmp_path: Path) -> None:
    engine = Scripted(chunks=1, delay_s=0.0, before_first_s=0.3)  # each takes a while: they overlap
    prompt = "lorem ipsum dolor sit amet " * 1500  # 40,500 characters, ~10k tokens
    with server(engine, tmp_path, keys=[key("small", "sk-small-tpm-01", tpm=3000)]) as live:
        def one(_: int) -> int:
            with client(live, "sk-small-tpm-01") as c:
                return c.post("/chat/completions", json=body(prompt, max_tokens=1)).status_code

        with ThreadPoolExecutor(10) as pool:
            statuses = list(pool.map(one, range(10), timeout=60))
    assert statuses.count(429) >= 9, statuses  # was: all 10 admitted, 100k tokens under a 3k limit
    assert len(engine.seen) == statuses.count(200) <= 1


# ---- 6. an abandoned request is charged, logged and counted ------------------------------------------------

def rows_of(live: LiveServer, key_name: str, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    log = live.app.state.request_log
    assert isinstance(log, RequestLog)
    deadline = time.monotonic() + timeout
    while True:
        assert log.writer.wait_idle(timeout)
        rows = log.store.rows(key=key_name)
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def remaining_tokens(c: httpx.Client) -> int:
    answer = c.post("/chat/completions", json=body("hi", max_tokens=1))
    assert answer.status_code == 200, answer.text
    return int(answer.headers["x-ratelimit-remaining-tokens"])


def test_an_abandoned_stream_is_charged_logged_and_counted(tmp_path: Path) -> None:
    engine = Scripted(chunks=40, delay_s=0.05)
    limit = 100_000  # over a day: about a token a second comes back meanwhile
    with server(engine, tmp_path, keys=[key("leaver", "sk-leaver-00001", tpm=limit)],
                rate_limit_window_s=86400) as live, client(live, "sk-leaver-00001") as c:
        before = remaining_tokens(c)
        read = 0
        with c.stream("POST", "/chat/completions", json=body("x" * 4000, stream=True)) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith("data: ") and '"content"' in line:
                    read += 1
                    if read == 38:
                        break  # the client leaves with 38 of 40 chunks read
        [row] = [r for r in rows_of(live, "leaver", 3) if r["status"] == 499]
        # was: no token counts at all
        assert row["tokens_estimated"] is True and row["prompt_tokens"] >= 1000 and row["completion_tokens"] >= 9
        registry = live.app.state.metrics.registry
        labels = {"key_name": "leaver", "route": "default", "model": "m", "reasoning_effort": "none"}
        prompt_total = registry.get_sample_value("unimodel_tokens_total", {**labels, "token_type": "prompt"})
        assert prompt_total is not None and prompt_total >= row["prompt_tokens"]  # was: not counted
        charged = before - remaining_tokens(c)
        assert charged >= row["prompt_tokens"] + row["completion_tokens"] - 60  # the limits read the same estimate


def test_a_request_abandoned_before_its_first_token_is_charged_its_prompt(tmp_path: Path) -> None:
    engine = Scripted(chunks=1, before_first_s=30.0)
    limit = 100_000
    with server(engine, tmp_path, keys=[key("early", "sk-early-leaver1", tpm=limit)],
                rate_limit_window_s=86400) as live, client(live, "sk-early-leaver1") as c:
        engine.before_first_s = 0.0
        before = remaining_tokens(c)
        engine.before_first_s = 30.0
        with client(live, "sk-early-leaver1", timeout=0.5) as impatient, pytest.raises(httpx.ReadTimeout):
            impatient.post("/chat/completions", json=body("y" * 40_000))
        [row] = [r for r in rows_of(live, "early", 2) if r["status"] == 499]
        assert row["tokens_estimated"] is True and row["prompt_tokens"] >= 10_000 and row["completion_tokens"] == 0
        engine.before_first_s = 0.0
        charged = before - remaining_tokens(c)
        assert charged >= 10_000 - 60  # was: 0, the whole reservation given back


# ---- 11. a key over its rpm is refused before its body is read ----------------------------------------------

def many_empty_parts(target: int = 19 * MIB + 400 * 1024) -> bytes:
    """A valid chat body of ~19.4 MiB: messages of 512 empty text parts each (~780k parts)."""
    part = '{"type":"text","text":""}'
    message = '{"role":"user","content":[' + ",".join([part] * 512) + "]}"
    n = target // (len(message) + 1)
    return ('{"model":"m","messages":[' + ",".join([message] * n) + "]}").encode()


def response_of(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection without an answer"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return int(head.split(b" ")[1]), rest


def test_a_key_over_its_rpm_is_refused_before_its_huge_body_is_read(tmp_path: Path) -> None:
    payload = many_empty_parts()
    counts: list[int] = []
    live = server(Scripted(), tmp_path, keys=[key("tight", "sk-tight-rpm-01", rpm=1)], request_log=False)
    live.app.add_middleware(CountsBodyBytes, counts=counts)
    with live:
        with client(live, "sk-tight-rpm-01") as c:
            assert c.post("/chat/completions", json=body()).status_code == 200
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{live.port}\r\nContent-Type: application/json"
                f"\r\nAuthorization: Bearer sk-tight-rpm-01\r\nContent-Length: {len(payload)}\r\n\r\n").encode()
        before = len(counts)
        with socket.create_connection(("127.0.0.1", live.port), timeout=10.0) as sock:
            sent: list[Optional[BaseException]] = []

            def send() -> None:
                try:
                    sock.sendall(head + payload)  # the server may answer (and hang up) before it is all sent
                    sent.append(None)
                except OSError as exc:
                    sent.append(exc)

            sender = threading.Thread(target=send, daemon=True)
            started = time.monotonic()
            sender.start()
            status, rest = response_of(sock)
            took = time.monotonic() - started
            sender.join(timeout=30)
        assert status == 429, rest[:300]
        assert took < 5.0  # generous: parsing it took 3-13 s (and ~700 MB) before
        deadline = time.monotonic() + 5
        while len(counts) == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert counts[before:] == [0]  # not a byte of it was read, so it was never parsed
