"""Auth before the body, over a real socket: a request without a key is answered 401 while its (20 MiB) body
has not even been sent, and the app never reads a byte of it; with the key, the same request is served."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.support.fake_engine import InMemoryEngine
from tests.support.live_server import LiveServer
from tests.support.asgi_counting import CountsBodyBytes
from unimodel.config import Settings
from unimodel.engines.base import GenerationRequest
from unimodel.protocol.events import ContentDelta, Event, Finish, Usage

MIB = 1024 * 1024
DECLARED = 20 * MIB  # the default --max-request-bytes, under this server's
BODY = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


class Answers(InMemoryEngine):
    kind = "answers"

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        yield ContentDelta("ok")
        yield Usage(1, 1)
        yield Finish("stop")


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[LiveServer, list[int]]]:
    settings = Settings(engine="upstream", upstream="http://127.0.0.1:9/v1", api_keys=["sk-x"],
                        max_request_bytes=32 * MIB)
    live, counts = LiveServer(settings, Answers()), list[int]()
    live.app.add_middleware(CountsBodyBytes, counts=counts)
    with live:
        yield live, counts


def _head(port: int, length: int, key: str | None) -> bytes:
    lines = ["POST /v1/chat/completions HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json",
             f"Content-Length: {length}"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection without an answer"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    while len(body) < int(headers["content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection mid-answer"
        body += chunk
    return int(status_line.split()[1]), headers, body


def _error(body: bytes) -> dict[str, Any]:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize("sent", [0, 4096], ids=["no body", "4 KiB of it"])
def test_no_key_is_a_401_before_the_body_is_sent_and_none_of_it_is_read(
        server: tuple[LiveServer, list[int]], sent: int) -> None:
    live, counts = server
    before = len(counts)
    with socket.create_connection(("127.0.0.1", live.port), timeout=2.0) as sock:  # a read past 2 s fails
        started = time.monotonic()
        sock.sendall(_head(live.port, DECLARED, key=None) + BODY[:sent] + b" " * max(0, sent - len(BODY)))
        status, headers, body = _response(sock)
        took = time.monotonic() - started
    assert status == 401 and took < 2.0
    assert headers["content-type"] == "application/json" and headers.get("x-request-id")
    assert _error(body)["code"] == "invalid_api_key"
    deadline = time.monotonic() + 5
    while len(counts) == before and time.monotonic() < deadline:  # the count lands once the app returns
        time.sleep(0.01)
    assert counts[before:] == [0]  # the app never read a byte of the body


def test_with_the_key_the_same_request_is_read_in_full_and_served(server: tuple[LiveServer, list[int]]) -> None:
    live, counts = server
    before = len(counts)
    payload = BODY + b" " * (DECLARED - len(BODY))  # JSON allows the trailing whitespace
    with socket.create_connection(("127.0.0.1", live.port), timeout=30.0) as sock:
        sock.sendall(_head(live.port, DECLARED, key="sk-x") + payload)
        status, _, body = _response(sock)
    assert status == 200, body[:500]
    assert json.loads(body)["choices"][0]["message"]["content"] == "ok"
    deadline = time.monotonic() + 5
    while len(counts) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert counts[before:] == [DECLARED]


def test_a_body_declared_over_the_limit_is_still_a_413_at_once(server: tuple[LiveServer, list[int]]) -> None:
    live, _ = server
    with socket.create_connection(("127.0.0.1", live.port), timeout=2.0) as sock:
        sock.sendall(_head(live.port, 40 * MIB, key="sk-x"))
        status, _, body = _response(sock)
    assert status == 413 and _error(body)["code"] == "request_too_large"
