"""The request log's files (shield items 7 and 8, end to end): a real ``unimodel serve --log-prompts`` on SQLite in
a fresh data dir is sent every form of ``test_redaction.FORMS`` (as prompts, and echoed back as answers) and a
card split over two messages; then it is stopped and every file of its data dir is read as bytes, with the log
it printed: no raw value in any of them. The data dir it made is owner-only, and so is every file in it, the
SQLite ``-wal``/``-shm`` files included (they hold the prompts too). The same code on PostgreSQL is checked once,
down to the files of its tables and WAL; the spill file's permissions on their own.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import text

from tests.security.test_redaction import FORMS
from tests.support.live_server import LiveServer, free_port
from tests.support.scripted_upstream import Script, ScriptedUpstream
from unimodel.compose import build_engine
from unimodel.config import Settings
from unimodel.telemetry.request_log import RequestLog, load_or_create_secret
from unimodel.telemetry.spill import SpillFile
from unimodel.telemetry.store import LogStore

if TYPE_CHECKING:
    from tests.support.postgres_server import PostgresServer

CLIENT_KEY = "sk-test-client-key-0123456789abcdef"
SPLIT = ["my card is 4012 8888", "8888 1881 thanks"]  # a Visa test number over two messages
SPLIT_RAW = ["4012 8888", "8888 1881", "4012888888881881"]


def _raw_values() -> list[bytes]:
    """What must not be in any file: each listed value of the forms long enough not to occur by chance
    (8 characters or more), as written and NFKC-normalised, and the card split over two messages. A part of
    one form's value that another form keeps on purpose is left out: ``example.com`` is the domain of an
    address in one form and the host of a URL whose credentials are redacted in another."""
    values = {v for _, raws in FORMS for raw in raws for v in (raw, unicodedata.normalize("NFKC", raw))}

    def kept_elsewhere(value: str) -> bool:
        return any(value in form and not any(value in raw for raw in raws) for form, raws in FORMS)

    values = {v for v in values if len(v) >= 8 and not kept_elsewhere(v)} | set(SPLIT_RAW) | {CLIENT_KEY}
    return sorted(v.encode() for v in values)


RAW = _raw_values()
assert len(RAW) > 60


def raw_values_in(data: bytes) -> list[str]:
    return [raw.decode() for raw in RAW if raw in data]


def echo(body: dict[str, Any]) -> Script:
    """The upstream's answer: the client's messages, so the logged answer holds every value too."""
    return Script(mode="raw", content=" ".join(str(m.get("content")) for m in body.get("messages", [])))


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream({"echo": Script(respond=echo)}) as up:
        yield up


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _wait_ready(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"unimodel serve exited early:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("unimodel serve did not become ready")


def _chat(client: httpx.Client, messages: list[dict[str, str]], stream: bool) -> None:
    body = {"model": "echo", "messages": messages, "stream": stream, "user": "jörg.ünique@example.net"}
    if stream:
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200 and "[DONE]" in response.read().decode()
    else:
        assert client.post("/v1/chat/completions", json=body).status_code == 200


def test_a_real_server_leaves_no_raw_value_in_its_data_dir_or_its_log(upstream: ScriptedUpstream,
                                                                       tmp_path: Path) -> None:
    data_dir = tmp_path / "data"  # made by the server
    log_path = tmp_path / "server.log"
    port = free_port()
    old_umask = os.umask(0o022)  # the usual umask: files made without a mode of their own come out 0644
    try:
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "unimodel.cli", "serve", "--engine", "upstream", "--upstream",
                 upstream.base_url, "--port", str(port), "--data-dir", str(data_dir), "--log-prompts",
                 "--api-key", CLIENT_KEY, "--log-level", "debug", "--shutdown-grace-s", "5",
                 "--shutdown-drain-s", "0"],
                stdout=log_file, stderr=subprocess.STDOUT)
    finally:
        os.umask(old_umask)
    try:
        _wait_ready(port, proc, log_path)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=20,
                          headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as client:
            for i, (form, _) in enumerate(FORMS):
                _chat(client, [{"role": "user", "content": form}], stream=bool(i % 2))
            _chat(client, [{"role": "user", "content": SPLIT[0]}, {"role": "user", "content": SPLIT[1]}], False)
        deadline = time.monotonic() + 20  # the writer flushes every 0.2 s: the WAL holds the rows by then
        while not (data_dir / "requests.db-wal").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        running = {p.name: _mode(p) for p in data_dir.iterdir()}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)

    # item 8: the data dir the server made, and every file in it while it ran, owner-only
    assert _mode(data_dir) == 0o700
    assert {"requests.db", "requests.db-wal", "requests.db-shm", "request-log.secret"} <= set(running)
    assert {name: mode for name, mode in running.items() if mode & 0o077} == {}

    # item 7: no raw value in any file it left, nor in what it printed
    files = sorted(p for p in data_dir.rglob("*") if p.is_file())
    assert {p.name: raw_values_in(p.read_bytes()) for p in files} == {p.name: [] for p in files}
    assert raw_values_in(log_path.read_bytes()) == []
    assert {p.name: _mode(p) for p in files if _mode(p) & 0o077} == {}

    db = sqlite3.connect(f"file:{data_dir / 'requests.db'}?mode=ro", uri=True)  # the rows are there, redacted
    try:
        rows = db.execute("SELECT prompt, answer FROM requests ORDER BY id").fetchall()
    finally:
        db.close()
    assert len(rows) == len(FORMS) + 1 and all("<" in prompt and "<" in answer for prompt, answer in rows)
    assert rows[-1][0] == "user: my card is <CARD>\nuser: <CARD> thanks"
    assert b"request_id=" in log_path.read_bytes()  # the access log did write its lines


def test_sqlite_files_are_owner_only_in_an_existing_directory(tmp_path: Path) -> None:
    """SQLite makes ``-wal`` and ``-shm`` with the database file's permission bits: the database must be
    owner-only before SQLite first opens it, not only after the migration (by then both exist, 0644)."""
    tmp_path.chmod(0o755)  # a directory the operator made, e.g. --log-db /srv/unimodel/requests.db
    old_umask = os.umask(0o022)
    try:
        store = LogStore(f"sqlite:///{tmp_path / 'requests.db'}")
        store.migrate()
        with store.engine.connect() as conn:  # the connection is open: the WAL and the shared memory exist
            conn.execute(text("SELECT count(*) FROM requests"))
            modes = {p.name: _mode(p) for p in tmp_path.iterdir()}
        store.dispose()
    finally:
        os.umask(old_umask)
    assert modes == {"requests.db": 0o600, "requests.db-wal": 0o600, "requests.db-shm": 0o600}


def test_a_database_an_older_version_left_world_readable_is_made_owner_only(tmp_path: Path) -> None:
    db = tmp_path / "requests.db"
    sqlite3.connect(db).close()
    db.chmod(0o644)
    for suffix in ("-wal", "-shm"):  # left by a crash, with the old mode
        Path(f"{db}{suffix}").touch(mode=0o644)
        Path(f"{db}{suffix}").chmod(0o644)
    store = LogStore(f"sqlite:///{db}")
    store.migrate()
    with store.engine.connect() as conn:
        conn.execute(text("SELECT count(*) FROM requests"))
        modes = {p.name: _mode(p) for p in tmp_path.iterdir()}
    store.dispose()
    assert modes == {"requests.db": 0o600, "requests.db-wal": 0o600, "requests.db-shm": 0o600}


def test_the_data_dir_and_the_spill_file_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # the most permissive: every mode comes from the code
    try:
        spill = SpillFile(tmp_path / "new" / "requests.db.spill.jsonl")
        spill.claim()
        spill.append([{"log_id": "a" * 32, "prompt": "user: <EMAIL>"}])
        store = LogStore(f"sqlite:///{tmp_path / 'made' / 'requests.db'}")
        store.migrate()
        store.dispose()
    finally:
        os.umask(old_umask)
        spill.release()
    assert _mode(tmp_path / "new") == 0o700 and _mode(tmp_path / "made") == 0o700
    assert _mode(spill.path) == 0o600 and _mode(spill.path.with_name(spill.path.name + ".lock")) == 0o600
    assert {p.name: _mode(p) for p in (tmp_path / "made").iterdir()} == {"requests.db": 0o600}


def test_a_secret_file_others_may_read_is_made_owner_only(tmp_path: Path) -> None:
    """The HMAC secret of the user hashes, copied into place with the usual umask (0644): made 0600 on start."""
    path = tmp_path / "request-log.secret"
    path.write_text("ab" * 32 + "\n")
    path.chmod(0o644)
    assert load_or_create_secret(path) == bytes.fromhex("ab" * 32)
    assert _mode(path) == 0o600


@pytest.fixture()
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own: its WAL holds no other test's rows (some write raw values on purpose)."""
    from tests.support.postgres_server import PostgresServer

    with PostgresServer() as server:
        yield server


def test_postgres_tables_and_wal_hold_no_raw_value(upstream: ScriptedUpstream, own_postgres: PostgresServer,
                                                   tmp_path: Path) -> None:
    """The same redaction before PostgreSQL: the rows, and the files of the database and of the WAL."""
    url = own_postgres.create_database()
    settings = Settings(engine="upstream", upstream=upstream.base_url, data_dir=tmp_path, log_db=url,
                        log_prompts=True, api_keys=[CLIENT_KEY])
    server = LiveServer(settings, build_engine(settings))
    prompt = "\n".join(form for form, _ in FORMS)  # every form in one prompt (echoed as the answer)
    with server, httpx.Client(base_url=server.base_url, timeout=30,
                              headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as client:
        body = {"model": "echo", "messages": [{"role": "user", "content": prompt}]}
        assert client.post("/chat/completions", json=body).status_code == 200
        log = server.app.state.request_log
        assert isinstance(log, RequestLog) and log.writer.wait_idle(20)
        with log.store.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(text("SELECT * FROM requests"))]
            conn.execute(text("CHECKPOINT"))
            oid = conn.execute(text("SELECT oid FROM pg_database WHERE datname = current_database()")).scalar()
    assert len(rows) == 1 and "<CARD>" in rows[0]["prompt"] and "<API_KEY>" in rows[0]["answer"]
    assert raw_values_in(json.dumps(rows, default=str, ensure_ascii=False).encode()) == []
    files = [p for d in (own_postgres.data / "pg_wal", own_postgres.data / "base" / str(oid))
             for p in d.rglob("*") if p.is_file()]
    assert files and [(p.name, raw_values_in(p.read_bytes())) for p in files
                      if raw_values_in(p.read_bytes())] == []
