"""The request log through a real server: a request full of personal data leaves a complete row and no raw
personal data on disk or in the server's log; and no row is lost while PostgreSQL is stopped mid-load."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from sqlalchemy import text

from tests.support.live_server import LiveServer
from tests.support.scripted_upstream import Script, ScriptedUpstream
from unimodel.config import Settings
from unimodel.compose import build_engine
from unimodel.gateway.keys import plain_key_name
from unimodel.telemetry.request_log import RequestLog

if TYPE_CHECKING:
    from tests.support.postgres_server import PostgresServer

EMAIL = "jane.doe@example.org"
PHONE = "+44 20 7946 0958"
CARD = "4111 1111 1111 1111"
IBAN = "DE89 3704 0044 0532 0130 00"
IP = "203.0.113.77"
PROVIDER_KEY = "sk-proj-Xq7uV2mN9pL4kR8sT1wY6zA3bC5dE0fG"
BEARER = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJqYW5lIn0.c2lnbmF0dXJlLXNlY3JldA"
CLIENT_KEY = "sk-test-client-key-0123456789abcdef"
RAW = [EMAIL, PHONE, CARD, CARD.replace(" ", ""), IBAN, IBAN.replace(" ", ""), IP, PROVIDER_KEY, BEARER, CLIENT_KEY,
       "Jane.Doe@Example.org"]

PROMPT = (f"I am {EMAIL}, phone {PHONE}. Pay with card {CARD} or IBAN {IBAN}. My server is {IP}; "
          f"the key is {PROVIDER_KEY} and the header was 'Authorization: Bearer {BEARER}'.")
SCRIPTS = {
    "pii": Script(mode="raw", reasoning=f"The user {EMAIL} has card {CARD}.",
                  content=f"I will write to {EMAIL} and call {PHONE}.",
                  tool_calls=[("send_mail", f'{{"to": "{EMAIL}", "iban": "{IBAN}"}}')]),
    "plain": Script(mode="raw", content="ok " * 20, chunk_chars=6, frame_delay_s=0.002),
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(SCRIPTS) as up:
        yield up


def gateway(upstream: ScriptedUpstream, data_dir: Path, **settings: Any) -> LiveServer:
    s = Settings(engine="upstream", upstream=upstream.base_url, upstream_connect_timeout_s=1.0, data_dir=data_dir,
                 api_keys=[CLIENT_KEY], **settings)
    return LiveServer(s, build_engine(s))


def request_log(server: LiveServer) -> RequestLog:
    log = server.app.state.request_log
    assert isinstance(log, RequestLog)
    return log


def chat(client: httpx.Client, model: str, stream: bool, request_id: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "stream": stream, "user": EMAIL, "reasoning_effort": "high",
            "tools": [{"type": "function", "function": {"name": "send_mail"}}],
            "messages": [{"role": "user", "content": PROMPT}], **extra}
    return client.post("/chat/completions", json=body, headers={"X-Request-Id": request_id})


def raw_pii_in(paths: list[Path]) -> list[tuple[str, str]]:
    found = []
    for path in paths:
        data = path.read_bytes()
        found += [(path.name, raw) for raw in RAW if raw.encode() in data or raw.encode("utf-16-le") in data]
    return found


def test_a_request_full_of_pii_leaves_a_complete_row_and_no_raw_pii(
        upstream: ScriptedUpstream, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    server = gateway(upstream, tmp_path, log_prompts=True)
    with server, httpx.Client(base_url=server.base_url, timeout=20,
                              headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as client:
        assert chat(client, "pii", False, "pii-json").status_code == 200
        with client.stream("POST", "/chat/completions", json={
                "model": "pii", "stream": True, "user": EMAIL, "messages": [{"role": "user", "content": PROMPT}]},
                headers={"X-Request-Id": "pii-sse"}) as response:
            assert response.status_code == 200 and "[DONE]" in response.read().decode()
        assert chat(client, EMAIL, False, "pii-bad-model").status_code == 404  # refused, and the message echoes it
        assert client.post("/chat/completions", content=PROMPT.encode(),
                           headers={"X-Request-Id": "pii-not-json"}).status_code == 400
        log = request_log(server)
        assert log.writer.wait_idle(20)
        on_disk = sorted(p for p in tmp_path.iterdir() if p.is_file())
        assert {p.name for p in on_disk} >= {"requests.db", "requests.db-wal", "request-log.secret"}
        assert raw_pii_in(on_disk) == []  # the database, its WAL (the rows are still in it), the secret
        rows = {r["client_request_id"]: r for r in log.store.rows()}  # the X-Request-Id each was sent with
    assert raw_pii_in(sorted(p for p in tmp_path.iterdir() if p.is_file())) == []  # after the checkpoint too
    assert [raw for raw in RAW if raw in caplog.text] == []
    assert "client_request_id=pii-json" in caplog.text  # the access log did write its lines

    assert set(rows) == {"pii-json", "pii-sse", "pii-bad-model", "pii-not-json"}
    row = rows["pii-json"]
    assert row["key_name"] == plain_key_name(CLIENT_KEY)
    assert row["route"] == "agent" and row["model"] == "pii"  # tools: agent
    assert row["status"] == 200 and row["finish_reason"] == "tool_calls" and row["tool_names"] == ["send_mail"]
    assert row["reasoning_effort"] == "high" and row["model_effort"] == "high" and row["upstream"] == "primary"
    assert row["prompt_tokens"] and row["reasoning_tokens"] and row["completion_tokens"]
    assert 0 < row["ttft_ms"] <= row["ttfa_ms"] <= row["latency_ms"]
    assert len(row["user_hash"]) == 64 and row["user_hash"] == rows["pii-sse"]["user_hash"]
    assert row["prompt"] == ("user: I am <EMAIL>, phone <PHONE>. Pay with card <CARD> or IBAN <IBAN>. My server "
                             "is <IP>; the key is <API_KEY> and the header was 'Authorization: Bearer <BEARER>'.")
    assert row["answer"] == "I will write to <EMAIL> and call <PHONE>."
    assert rows["pii-sse"]["stream"] is True and rows["pii-sse"]["answer"] == row["answer"]
    assert rows["pii-bad-model"]["status"] == 404 and rows["pii-bad-model"]["model"] is None
    assert rows["pii-not-json"]["status"] == 400 and rows["pii-not-json"]["error_type"]


def test_no_row_is_lost_while_postgres_is_stopped_mid_load(
        upstream: ScriptedUpstream, postgres_server: "PostgresServer", tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    url = postgres_server.create_database()
    server = gateway(upstream, tmp_path, log_db=url, log_prompts=True, log_buffer_rows=5)
    total, stop_after, start_after = 90, 20, 55
    done: list[str] = []
    statuses: list[int] = []
    lock = threading.Lock()
    down, back = threading.Event(), threading.Event()

    def one(i: int, client: httpx.Client) -> None:
        response = chat(client, "plain" if i % 3 else "pii", bool(i % 2), f"load-{i:03d}")
        with lock:
            statuses.append(response.status_code)
            done.append(f"load-{i:03d}")
            if len(done) == stop_after:
                down.set()
            if len(done) == start_after:
                back.set()

    try:
        with server, httpx.Client(base_url=server.base_url, timeout=30,
                                  headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as client:
            log = request_log(server)
            with ThreadPoolExecutor(4) as pool:
                futures = [pool.submit(one, i, client) for i in range(total)]
                assert down.wait(60)
                postgres_server.stop()  # mid-load: requests keep coming while the database is gone
                assert back.wait(60)
                spill = log.writer.spill
                deadline = time.monotonic() + 20
                while spill.count() == 0 and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert spill.count() > 0 and log.writer.db_up is False  # past the 5-row buffer: on disk
                assert raw_pii_in([spill.path]) == []  # redacted and hashed before they were spilled
                postgres_server.start()
                for f in futures:
                    f.result(timeout=60)
            assert statuses == [200] * total  # no request failed
            assert log.writer.wait_idle(30)
            assert log.writer.replayed > 0 and log.writer.dropped == 0 and log.writer.rejected == 0
            assert not spill.path.exists()
    finally:
        if not postgres_server.running:
            postgres_server.start()
    with log.store.engine.connect() as conn:
        counts = dict(conn.execute(text("SELECT client_request_id, count(*) FROM requests "
                                        "GROUP BY client_request_id")).all())
    log.store.dispose()
    assert counts == {f"load-{i:03d}": 1 for i in range(total)}  # every row, exactly once
    assert "the database" in caplog.text and "answers again" in caplog.text
    assert [raw for raw in RAW if raw in caplog.text] == []
    pg_files = [p for p in postgres_server.data.rglob("*") if p.is_file()]
    assert raw_pii_in(pg_files) == []  # nor in PostgreSQL's tables or WAL
