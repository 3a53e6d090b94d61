"""The HTTP layer's bounds (``server/connections.py``) and stalled streaming clients, on real sockets.

A server without a key is attacked as the issue did it: one huge header line, heads that never finish, more
sockets than it has file descriptors, streams that stop reading (with a pool of 4 upstream connections).
The bounds are tested through ``unimodel serve`` as a process (its flags, its open-file limit, its memory) and
through the test server (``tests/support/live_server.py`` runs the same protocol, from the same settings).
"""

from __future__ import annotations

import json
import logging
import resource
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Optional

import httpx
import pytest

from tests.support.live_server import LiveServer, free_port
from tests.support.scripted_upstream import Script, ScriptedUpstream
from unimodel.compose import build_engine
from unimodel.config import Settings
from unimodel.telemetry.request_log import RequestLog

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

KEYS = [f"sk-bounds-key-{i}-0123456789" for i in range(6)]
MIB = 1024 * 1024


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


# ---- unimodel serve as a process ----------------------------------------------------------------------------

@contextmanager
def serve(upstream: ScriptedUpstream, *flags: str, open_files: Optional[int] = None) -> Iterator[tuple[int, int]]:
    """``unimodel serve`` in front of ``upstream`` with ``flags``; yields (pid, port). ``open_files``: its
    RLIMIT_NOFILE (soft and hard)."""
    port = free_port()

    def limit() -> None:
        if open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

    proc = subprocess.Popen(
        [sys.executable, "-m", "unimodel.cli", "serve", "--engine", "upstream", "--upstream", upstream.base_url,
         "--port", str(port), "--no-request-log", "--log-level", "warning", *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=limit)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "unimodel serve exited early"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "unimodel serve did not start"
            time.sleep(0.1)
        yield proc.pid, port
    finally:
        proc.kill()
        proc.wait(timeout=30)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def head(port: int, extra: bytes = b"") -> bytes:
    return b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % port + extra


def read_until_closed(sock: socket.socket, timeout: float) -> bytes:
    """What the server sends until it closes the connection; AssertionError if it is still open at ``timeout``."""
    sock.settimeout(timeout)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    except socket.timeout:
        raise AssertionError(f"the server kept the connection open for {timeout} s (got {out[:80]!r})") from None
    return out


def test_a_header_line_far_over_the_cap_is_refused_and_memory_stays_flat(
        scripted_upstream: ScriptedUpstream) -> None:
    """Six sockets each send one header line of 20 MiB, never finishing it. Before, httptools kept every byte
    (the server grew by the 120 MiB sent and more); now each gets 431 once its head passes --max-header-bytes and
    is closed, and the server's memory does not move."""
    line = b"a" * (20 * MIB)
    with serve(scripted_upstream, "--max-header-bytes", "16384") as (pid, port):
        before = rss_bytes(pid)
        answers: list[bytes] = []
        with ExitStack() as stack:
            for _ in range(6):
                sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=20))
                sent = 0
                try:
                    sock.sendall(head(port, b"X-Big: "))
                    view = memoryview(line)
                    while sent < len(line):
                        sent += sock.send(view[sent:sent + 256 * 1024])
                except (BrokenPipeError, ConnectionResetError):
                    pass
                except socket.timeout:
                    raise AssertionError("the server stopped reading but did not close") from None
                assert sent < len(line), "the server read a 20 MiB header line whole"
                answers.append(read_until_closed(sock, 10))
            grown = rss_bytes(pid) - before
    assert all(a.startswith(b"HTTP/1.1 431 ") for a in answers), answers
    assert b'"code":"request_headers_too_large"' in answers[0]
    assert grown < 40 * MIB, f"the server grew by {grown / MIB:.0f} MiB"


def test_a_client_that_sends_half_a_head_and_stalls_is_disconnected(scripted_upstream: ScriptedUpstream) -> None:
    """Half the headers, then nothing: closed (408) after --header-timeout-s; a trickle of bytes does not extend
    it. Before, such a connection stayed open for as long as the client liked."""
    with serve(scripted_upstream, "--header-timeout-s", "1") as (_, port), \
            socket.create_connection(("127.0.0.1", port)) as stalled, \
            socket.create_connection(("127.0.0.1", port)) as trickle, \
            socket.create_connection(("127.0.0.1", port)) as silent:
        started = time.monotonic()
        stalled.sendall(head(port, b"User-Agent: half"))
        trickle.sendall(b"GET /health HTTP/1.1\r\n")
        for _ in range(3):  # a byte every 0.4 s: under a keep-alive timer's reach, not under the head's
            time.sleep(0.4)
            try:
                trickle.sendall(b"X")
            except OSError:
                break
        assert read_until_closed(stalled, 10).startswith(b"HTTP/1.1 408 ")
        assert read_until_closed(trickle, 10).startswith(b"HTTP/1.1 408 ")
        assert read_until_closed(silent, 10) == b""  # sent nothing: just closed
        assert time.monotonic() - started < 8


def test_idle_connections_past_the_cap_do_not_lock_out_a_new_client(scripted_upstream: ScriptedUpstream) -> None:
    """400 sockets with half-sent heads against a server allowed 256 open files and --max-connections 32: a new
    client's /health is still answered at once (the longest-idle connections make room). Before, the sockets
    took every file descriptor, accept failed, and /health stopped answering."""
    with serve(scripted_upstream, "--max-connections", "32", "--upstream-max-connections", "8",
               "--header-timeout-s", "60", open_files=256) as (_, port), ExitStack() as stack:
        flood = []
        for _ in range(400):
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            sock.sendall(head(port))
            flood.append(sock)
        started = time.monotonic()
        answer = httpx.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert answer.status_code == 200
        assert time.monotonic() - started < 5
        # the server holds at most its cap: the rest of the flood was closed, not left to wait
        closed = 0
        for sock in flood:
            sock.settimeout(0.01)
            try:
                closed += sock.recv(1) == b""
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed += 1
        assert closed >= 400 - 32


# ---- streams that stop reading ------------------------------------------------------------------------------

# "long": about 5 MB of SSE, more than the socket buffers hold
LONG = {"long": Script(content="word " * 1_000_000, chunk_chars=500), "short": Script(content="ok"),
        "slow": Script(content="ok", delay_s=3)}


def live(upstream: ScriptedUpstream, **settings: Any) -> LiveServer:
    s = Settings(**{"engine": "upstream", "upstream": upstream.base_url, "retries": 0, "request_log": False,
                    "upstream_max_connections": 4, **settings})
    return LiveServer(s, build_engine(s))


def stalled_stream(port: int, key: str) -> socket.socket:
    """A streaming request from a client that never reads (a tiny receive buffer, never drained)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    body = json.dumps({"model": "long", "messages": [{"role": "user", "content": "go"}], "stream": True}).encode()
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (port, key.encode(), len(body))
                 + body)
    return sock


def ask(server: LiveServer, key: str, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{server.base_url}/chat/completions", timeout=timeout, headers={"Authorization": f"Bearer {key}"},
                      json={"model": "short", "messages": [{"role": "user", "content": "hi"}]})


def access_lines(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "unimodel.access" and text in r.getMessage()]


def test_with_every_connection_busy_a_new_one_is_refused_at_once() -> None:
    """--max-connections 2, both with a request in flight (no idle one to close): a third connection is answered
    503 too_many_connections with Retry-After and closed, and the two requests finish."""
    with ScriptedUpstream(dict(LONG)) as upstream, live(upstream, max_connections=2) as server, \
            ThreadPoolExecutor(2) as pool:
        body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
        busy = [pool.submit(httpx.post, f"{server.base_url}/chat/completions", json=body, timeout=20)
                for _ in range(2)]
        wait_until(lambda: server.app.state.chat.in_flight == 2, 10, "two requests in flight")
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            answer = read_until_closed(sock, 5)
        assert answer.startswith(b"HTTP/1.1 503 ") and b'"code":"too_many_connections"' in answer
        assert b"retry-after: 1\r\n" in answer
        assert [f.result().status_code for f in busy] == [200, 200]


def test_streams_that_stop_reading_are_ended_and_free_the_pool_and_the_limits(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Four keys each open a stream and stop reading, with a pool of 4 upstream connections and one request in
    flight per key. After --stream-write-timeout-s each stream is ended (499 client_write_timeout in the access
    log and the request log), its upstream connection and its limits slot freed: a fifth key's request gets an
    upstream connection, and the first key may ask again. Before, the four streams held the pool for ever (the
    fifth key's request ended in 504) and their slots with it (the first key got 429)."""
    caplog.set_level(logging.INFO, logger="unimodel.access")
    with ScriptedUpstream(dict(LONG)) as upstream, \
            live(upstream, api_keys=KEYS, stream_write_timeout_s=2, max_concurrent=1, upstream_connect_timeout_s=10,
                 request_log=True, data_dir=tmp_path) as server, ExitStack() as stack:
        for key in KEYS[:4]:
            stack.enter_context(stalled_stream(server.port, key))
        wait_until(lambda: server.app.state.chat.in_flight == 4, 10, "four streams in flight")
        started = time.monotonic()
        other = ask(server, KEYS[4])
        assert other.status_code == 200, other.text
        assert time.monotonic() - started < 9  # it got a connection once the stalled ones were dropped
        wait_until(lambda: server.app.state.chat.in_flight == 0, 15, "every stalled stream to end")
        again = ask(server, KEYS[0])
        assert again.status_code == 200, again.text
        log = server.app.state.request_log
        assert isinstance(log, RequestLog) and log.writer.wait_idle(20)
        rows = log.store.rows(newest_first=False)
    ended = access_lines(caplog, "error_type=client_write_timeout")
    assert len(ended) == 4 and all("status=499" in line for line in ended), ended
    stalled_rows = [r for r in rows if r["error_type"] == "client_write_timeout"]
    assert len(stalled_rows) == 4 and {r["status"] for r in stalled_rows} == {499}


def test_a_slow_reader_is_not_a_stalled_one(caplog: pytest.LogCaptureFixture) -> None:
    """A client that reads a little every half second, with a write timeout of 1.5 s, is not cut off: only a
    pause in which it takes nothing counts."""
    caplog.set_level(logging.INFO, logger="unimodel.access")
    with ScriptedUpstream(dict(LONG)) as upstream, \
            live(upstream, api_keys=KEYS[:1], stream_write_timeout_s=1.5) as server, \
            stalled_stream(server.port, KEYS[0]) as sock:
        wait_until(lambda: server.app.state.chat.in_flight == 1, 10, "the stream in flight")
        sock.settimeout(5)
        received = 0
        for _ in range(12):
            time.sleep(0.5)
            received += len(sock.recv(16384))
        assert server.app.state.chat.in_flight == 1 and received > 20_000
        assert access_lines(caplog, "model=long") == []  # still going
    wait_until(lambda: server.app.state.chat.in_flight == 0, 10, "the stream to end")


def test_one_key_cannot_hold_the_whole_upstream_pool(caplog: pytest.LogCaptureFixture) -> None:
    """One key opens four streams that stop reading, with a pool of 4: it holds its share (2, half the pool)
    and its other two are refused with 429 upstream_share_exceeded, so another key is answered at once, long
    before any write timeout. Before, the four streams took the whole pool and the other key's request waited
    for a connection until its connect timeout: 504."""
    with ScriptedUpstream(dict(LONG)) as upstream, \
            live(upstream, api_keys=KEYS[:2], stream_write_timeout_s=120, upstream_connect_timeout_s=3) as server, \
            ExitStack() as stack:
        socks = [stack.enter_context(stalled_stream(server.port, KEYS[0])) for _ in range(4)]
        wait_until(lambda: server.app.state.chat.in_flight >= 2, 10, "two streams in flight")
        time.sleep(0.5)  # all four have reached the server
        started = time.monotonic()
        other = ask(server, KEYS[1], timeout=10)
        assert other.status_code == 200, other.text
        assert time.monotonic() - started < 2.5
        assert server.app.state.chat.in_flight == 2  # the key's share; its other two were refused at once
        refused = 0
        for sock in socks:
            sock.settimeout(0.5)
            try:
                first = sock.recv(4096)
            except socket.timeout:
                continue
            if first.startswith(b"HTTP/1.1 429 "):
                assert b"upstream_share_exceeded" in first  # one small answer, in one read
                refused += 1
        assert refused == 2
        for sock in socks:  # the client leaves: the held streams end now (499), not at the write timeout
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset
            sock.close()
        wait_until(lambda: server.app.state.chat.in_flight == 0, 10, "the held streams to end")


def test_the_total_timeout_covers_time_blocked_on_writes(caplog: pytest.LogCaptureFixture) -> None:
    """A stream whose client stops reading, with --total-timeout-s 2 and a long write timeout: it ends at the
    total timeout (504 upstream_timeout in the access log), although no event wait was what ran out. Before,
    the request stayed blocked in its write, past its total timeout, for as long as the client held on."""
    caplog.set_level(logging.INFO, logger="unimodel.access")
    with ScriptedUpstream(dict(LONG)) as upstream, \
            live(upstream, api_keys=KEYS[:1], stream_write_timeout_s=120, total_timeout_s=2) as server, \
            stalled_stream(server.port, KEYS[0]):
        wait_until(lambda: server.app.state.chat.in_flight == 1, 10, "the stream in flight")
        wait_until(lambda: server.app.state.chat.in_flight == 0, 15, "the stream to end at its total timeout")
    [line] = access_lines(caplog, "model=long")
    assert "status=504" in line and "error_type=upstream_timeout" in line, line
