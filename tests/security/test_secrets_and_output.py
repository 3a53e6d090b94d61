"""Secrets and what gets printed, on real servers and the real CLI: an upstream's error body (personal data,
terminal escapes) reaches no log, row or ``unimodel logs`` output raw; credentials in the upstream URL and the
``--log-db`` URL are never printed; secrets come from owner-only files; ``keys revoke`` writes through a
symlinked config."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from tests.support.live_server import LiveServer, free_port
from tests.support.scripted_upstream import ScriptedUpstream
from tests.support.serve_cli import serve_settings
from unimodel import keys_cli
from unimodel.compose import build_engine, compose
from unimodel.config import Settings
from unimodel.engines.upstream import UpstreamEngine
from unimodel.gateway.keyhash import hash_key, key_prefix, new_key
from unimodel.printable import EXCERPT_CHARS, excerpt, mask_url, mask_urls_in
from unimodel.telemetry.request_log import RequestLog

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

EMAIL = "jane.doe@example.org"
CARD = "4111 1111 1111 1111"
RAW_PII = [EMAIL, CARD, CARD.replace(" ", "")]
#: an upstream's 500 that echoes the prompt, with a screen clear, a colour, a forged log line, a bell, a CSI
ERROR_BODY = (f"engine crashed on prompt 'I am {EMAIL}, card {CARD}'\x1b[2J\x1b[31m RED\r\n"
              "2030-01-01 00:00:00 INFO unimodel.access: status=200 forged\x07\x9b[1m").encode()
#: a model the upstream lists under a name with an escape, rich markup and a bidi override
ODD_MODEL = "odd\x1b[2J[bold]model\u202e"
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202e]")


class _Upstream(BaseHTTPRequestHandler):
    """An OpenAI-compatible upstream with two models: ``crash`` answers 500 with :data:`ERROR_BODY` as plain
    text, :data:`ODD_MODEL` answers 200."""

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._send(200, json.dumps({"data": [{"id": "crash"}, {"id": ODD_MODEL}]}).encode(), "application/json")

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        if body.get("model") == "crash":
            self._send(500, ERROR_BODY, "text/plain; charset=utf-8")
            return
        answer = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                               "finish_reason": "stop"}],
                  "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
        self._send(200, json.dumps(answer).encode(), "application/json")


@pytest.fixture()
def odd_upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "unimodel.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "400", **(env or {})})


# ---- an upstream's error body and the values it chose ---------------------------------------------------

def test_an_upstream_error_body_reaches_no_log_row_or_listing_raw(
        odd_upstream: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="unimodel")
    settings = Settings(engine="upstream", upstream=odd_upstream, data_dir=tmp_path, retries=0,
                        upstream_connect_timeout_s=2.0)
    server = LiveServer(settings, build_engine(settings))
    with server, httpx.Client(base_url=server.base_url, timeout=20) as client:
        crashed = client.post("/chat/completions", json={"model": "crash", "messages": [
            {"role": "user", "content": f"I am {EMAIL}, card {CARD}"}]})
        odd = client.post("/chat/completions", json={"model": ODD_MODEL, "messages": [
            {"role": "user", "content": "hi"}]})
        log = server.app.state.request_log
        assert isinstance(log, RequestLog) and log.writer.wait_idle(20)
        rows = log.store.rows()
    assert crashed.status_code == 502 and EMAIL not in crashed.text
    assert odd.status_code == 200 and odd.json()["model"] == ODD_MODEL  # the client's own JSON: as it is

    # the server log and the access log: what the upstream said is there, redacted and escaped
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("unimodel")]
    said = [line for line in lines if "the upstream answered 500" in line]
    assert said and "<EMAIL>" in said[0] and "<CARD>" in said[0] and "\\x1b[2J" in said[0]
    assert [raw for raw in RAW_PII if raw in caplog.text] == []
    assert [line for line in lines if CONTROL.search(line)] == []
    access = [line for line in lines if "finish_reason=" in line]
    assert any("\\x1b[2J[bold]model" in line for line in access)

    # the request log's rows
    assert len(rows) == 2
    for row in rows:
        for value in row.values():
            assert not (isinstance(value, str) and (CONTROL.search(value) or any(p in value for p in RAW_PII)))
    assert {r["model"] for r in rows} == {"crash", "odd\\x1b[2J[bold]model\\u202e"}

    # `unimodel logs`: the table prints markup literally, the JSON lines escape what JSON leaves raw
    table = _cli("logs", "--db", str(tmp_path / "requests.db"))
    assert table.returncode == 0, table.stderr
    assert "[bold]model" in table.stdout and not CONTROL.search(table.stdout.replace("\n", ""))
    as_json = _cli("logs", "--db", str(tmp_path / "requests.db"), "--json")
    assert as_json.returncode == 0 and not CONTROL.search(as_json.stdout.replace("\n", ""))
    assert {json.loads(line)["model"] for line in as_json.stdout.splitlines()} == {
        "crash", "odd\\x1b[2J[bold]model\\u202e"}
    stats = _cli("logs", "stats", "--db", str(tmp_path / "requests.db"))
    assert stats.returncode == 0 and not CONTROL.search(stats.stdout.replace("\n", ""))


def test_an_excerpt_is_bounded_and_keeps_no_part_of_a_value_it_cut() -> None:
    assert len(excerpt("x" * 100_000)) == EXCERPT_CHARS + 1  # and "…"
    # e-mails redacted shorter pull the card the capture cut in two into the first EXCERPT_CHARS: it is dropped
    long = f"{EMAIL} " * 36 + f"{CARD} and more " * 1000
    shown = excerpt(long)
    assert shown.startswith("<EMAIL> <EMAIL>") and shown.endswith("…") and "4111" not in shown
    assert excerpt("a\x1b[2Jb\r\nc\u2028d") == "a\\x1b[2Jb\\r\\nc\\u2028d"


@pytest.mark.parametrize("url,shown", [
    ("http://user:secret@gpu:8000/v1", "http://user:***@gpu:8000/v1"),
    ("https://sk-token-secret@api.example.com/v1", "https://***@api.example.com/v1"),
    ("https://api.example.com/v1?api_key=secret&x=1", "https://api.example.com/v1?api_key=***&x=1"),
    ("postgresql://user:secret@db/x", "postgresql://user:***@db/x"),
    ("postgresql://user:se@cret@db/x?sslpassword=secret", "postgresql://user:***@db/x?sslpassword=***"),
    ("redis://:secret@cache:6379/0", "redis://:***@cache:6379/0"),
    ("mysql://user:secret@[broken", "mysql://user:***@[broken"),
    ("http://gpu:8000/v1", "http://gpu:8000/v1"),
    ("requests.db", "requests.db"),
])
def test_mask_url_hides_every_credential(url: str, shown: str) -> None:
    assert mask_url(url) == shown
    assert "secret" not in mask_urls_in(f"cannot use '{url}' (see {url})")


# ---- credentials in URLs ----------------------------------------------------------------------------------

def test_url_credentials_are_never_printed(scripted_upstream: ScriptedUpstream, tmp_path: Path) -> None:
    upstream = scripted_upstream.base_url.replace("http://", "http://gpuuser:upsecret@")
    log_db = "postgresql://loguser:dbsecret@127.0.0.1:1/x"  # nothing listens: the writer says so, by URL
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "unimodel.cli", "serve", "--engine", "upstream", "--upstream", upstream,
         "--port", str(port), "--log-db", log_db, "--data-dir", str(tmp_path), "--log-level", "info",
         "--retries", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert ready is not None and ready.status_code == 200
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", timeout=20) as client:
            assert client.post("/chat/completions", json={"model": "raw-plain", "messages": [
                {"role": "user", "content": "hi"}]}).status_code == 200
            assert client.post("/chat/completions", json={"model": "fails-503", "messages": [
                {"role": "user", "content": "hi"}]}).status_code == 502
        time.sleep(1.0)  # the log writer tries the database and says it is down
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate(timeout=30)
    assert "gpuuser:***@" in output  # the upstream's URL was printed, masked
    assert "upsecret" not in output and "dbsecret" not in output
    assert "upsecret" not in ready.text

    # the CLI's errors: a --log-db that cannot be used, by `serve` and by `unimodel logs`
    for args in (["serve", "--engine", "upstream", "--upstream", upstream, "--log-db", "mysql://u:dbsecret@db/x"],
                 ["logs", "--db", "mysql://u:dbsecret@db/x"],
                 ["logs", "--db", "postgresql://u:dbsecret@db:notaport/x"],
                 ["logs", "--db", "postgresql://loguser:dbsecret@127.0.0.1:1/x"]):
        done = _cli(*args)
        assert done.returncode in (1, 2), (args, done.stderr)
        assert "dbsecret" not in done.stdout + done.stderr, args
        assert done.stderr.startswith("unimodel: error: ") and len(done.stderr.strip().splitlines()) == 1, args

    # credentials in the URL and a key would be two Authorization headers: refused at start-up, masked
    both = _cli("serve", "--engine", "upstream", "--upstream", upstream, "--upstream-api-key", "sk-other-key")
    assert both.returncode == 2 and "credentials in its URL and an API key" in both.stderr
    assert "upsecret" not in both.stderr


# ---- secrets from files -----------------------------------------------------------------------------------

def _secret_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_secrets_come_from_owner_only_files(scripted_upstream: ScriptedUpstream, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="unimodel")
    keys = _secret_file(tmp_path / "keys", "# the team's keys\nsk-file-key-one-0123456789\n\n"
                                           "  sk-file-key-two-0123456789  \r\n")
    up_key = _secret_file(tmp_path / "upstream-key", "sk-upstream-from-file\n")
    log_secret = _secret_file(tmp_path / "log-secret", "# HMAC key\nlog-secret-from-file\n", 0o640)
    metrics_key = _secret_file(tmp_path / "metrics-key", "sk-metrics-from-file\n")
    monkeypatch.setenv("UNIMODEL_UPSTREAM_API_KEY_FILE", str(up_key))  # the env var works as well as the flag
    settings = serve_settings(monkeypatch, "--engine", "upstream", "--upstream", scripted_upstream.base_url,
                              "--api-key-file", str(keys), "--log-secret-file", str(log_secret),
                              "--metrics-key-file", str(metrics_key), "--data-dir", str(tmp_path))
    assert settings.api_keys == ["sk-file-key-one-0123456789", "sk-file-key-two-0123456789"]
    assert settings.upstream_api_key == "sk-upstream-from-file"
    assert settings.log_secret is not None and settings.log_secret.get_secret_value() == "log-secret-from-file"
    assert "its group may read" in caplog.text  # 0640: used, with a warning
    parts = compose(settings)
    primary = parts.engines.primary
    assert isinstance(primary, UpstreamEngine) and primary.options.api_key == "sk-upstream-from-file"
    assert parts.metrics_key == "sk-metrics-from-file"
    assert parts.request_log is not None and parts.request_log.secret == b"log-secret-from-file"

    server = LiveServer(settings, build_engine(settings))
    body = {"model": "raw-plain", "messages": [{"role": "user", "content": "hi"}]}
    with server, httpx.Client(base_url=server.base_url, timeout=20) as client:
        assert client.post("/chat/completions", json=body).status_code == 401
        for key in settings.api_keys:
            assert client.post("/chat/completions", json=body,
                               headers={"Authorization": f"Bearer {key}"}).status_code == 200

    # refused, as one line: a file every user may read, one that cannot be read, two sources of one secret
    world = _secret_file(tmp_path / "world", "sk-world-readable-key\n", 0o644)
    for args, why in ((["--api-key-file", str(world)], "every user may read it"),
                      (["--upstream-api-key-file", str(world)], "every user may read it"),
                      (["--log-secret-file", str(world)], "every user may read it"),
                      (["--api-key-file", str(tmp_path / "missing")], "cannot read it"),
                      (["--upstream-api-key", "a", "--upstream-api-key-file", str(up_key)], "give one")):
        done = _cli("serve", "--engine", "upstream", "--upstream", scripted_upstream.base_url, *args)
        assert done.returncode == 2, args
        assert done.stderr.startswith("unimodel: error: ") and why in done.stderr, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and "sk-world" not in done.stderr


# ---- keys revoke through a symlink ------------------------------------------------------------------------

def test_keys_revoke_through_a_symlink_revokes_in_the_target_and_keeps_the_link(tmp_path: Path) -> None:
    secret = new_key()
    real_dir, link_dir = tmp_path / "repo", tmp_path / "etc"
    real_dir.mkdir()
    link_dir.mkdir()
    target = real_dir / "unimodel.yaml"
    target.write_text(f"# the gateway\nkeys:\n  - name: team-a\n    prefix: {key_prefix(secret)}\n"
                      f"    key_hash: '{hash_key(secret)}'\n")
    target.chmod(0o640)
    link = link_dir / "unimodel.yaml"
    link.symlink_to(target)

    result = CliRunner().invoke(keys_cli.keys_app, ["revoke", "team-a", "--config", str(link)])
    assert result.exit_code == 0, result.stderr
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert "revoked: true" in target.read_text() and target.read_text().startswith("# the gateway\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert Settings.load(link).keys[0].revoked
    assert sorted(p.name for p in real_dir.iterdir()) == ["unimodel.yaml"]  # no temporary file left
    assert sorted(p.name for p in link_dir.iterdir()) == ["unimodel.yaml"]
