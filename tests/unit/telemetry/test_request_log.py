"""The request-log observer: the row it builds from a finished request, the user hash, the secret, and the
prompt and answer reaching the database redacted (through the chat service, with a real SQLite store)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.support.fake_engine import InMemoryEngine
from unimodel.engines.base import GenerationRequest
from unimodel.protocol.events import (
    FLUSH,
    ContentDelta,
    Event,
    Finish,
    ReasoningDelta,
    ToolCallArgsDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from unimodel.service.chat import ChatService
from unimodel.formats.reasoning import AppliedReasoning
from unimodel.service.context import RequestContext
from unimodel.service.observer import Observers
from unimodel.service.parse import ParseStage
from unimodel.service.pipeline import Call, Pipeline
from unimodel.service.validate import ValidateStage
from unimodel.telemetry.request_log import (
    CAPTURE_CHARS,
    TEXT_CHARS,
    RequestLogConfig,
    UserHashes,
    load_or_create_secret,
    new_log_id,
    open_request_log,
    prepare_row,
    row_from,
    user_hash,
)
from unimodel.telemetry.schema import COLUMNS

EMAIL, CARD, PHONE = "jane.doe@example.org", "4111 1111 1111 1111", "+44 20 7946 0958"


class PiiEngine(InMemoryEngine):
    """Thinks, answers with the caller's email in the text, calls a tool, reports usage."""

    kind = "scripted"

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        yield ReasoningDelta("thinking about it")
        yield FLUSH  # about to wait: Flush is every engine's contract
        await asyncio.sleep(0)
        yield ContentDelta(f"I will write to {EMAIL} ")
        yield ContentDelta("now.")
        yield ToolCallStart(0, "call_1", "send_mail")
        yield ToolCallArgsDelta(0, "{}")
        yield ToolCallEnd(0)
        yield Usage(30, 12, reasoning_tokens=4, estimated=True)
        yield Finish("tool_calls")


def make_call(body: dict[str, Any]) -> Call:
    raw = json.dumps(body).encode()

    async def read() -> bytes:
        return raw

    return Call(RequestContext("req-pii"), {}, read)


async def test_a_request_full_of_pii_leaves_a_complete_row_and_no_raw_pii(tmp_path: Path) -> None:
    log = open_request_log(RequestLogConfig(data_dir=tmp_path, log_prompts=True))
    engine = PiiEngine()
    service = ChatService(engine, Pipeline([ParseStage(), ValidateStage(engine.models)]), Observers([log]),
                          capture_text_chars=CAPTURE_CHARS)
    await log.start()
    try:
        body = {"model": "m", "user": EMAIL, "reasoning_effort": "high",
                "tools": [{"type": "function", "function": {"name": "send_mail"}}],
                "messages": [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": [
                                 {"type": "text", "text": f"My card is {CARD}, call me on {PHONE}."},
                                 {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}
        await service.complete(await service.prepare(make_call(body)))
        assert await asyncio.to_thread(log.writer.wait_idle, 10)
    finally:
        await log.aclose()
    rows = log.store.rows()
    assert len(rows) == 1
    row = rows[0]
    assert row["request_id"] == "req-pii" and row["model"] == "m" and row["status"] == 200
    assert row["reasoning_effort"] == "high" and row["model_effort"] == "high"
    assert (row["prompt_tokens"], row["reasoning_tokens"], row["completion_tokens"]) == (30, 4, 12)
    assert row["tokens_estimated"] is True and row["finish_reason"] == "tool_calls"
    assert row["tool_names"] == ["send_mail"] and row["image_count"] == 1
    assert row["ttft_ms"] is not None and row["ttfa_ms"] >= row["ttft_ms"] and row["latency_ms"] >= row["ttfa_ms"]
    secret = bytes.fromhex((tmp_path / "request-log.secret").read_text().strip())
    assert row["user_hash"] == user_hash(secret, EMAIL) and len(row["user_hash"]) == 64
    assert row["prompt"] == "system: Be brief.\nuser: My card is <CARD>, call me on <PHONE>. [image]"
    assert row["answer"] == "I will write to <EMAIL> now."
    for path in tmp_path.iterdir():
        data = path.read_bytes()
        for raw in (EMAIL, CARD, PHONE, CARD.replace(" ", "")):
            assert raw.encode() not in data, (raw, path.name)


def test_the_row_has_every_column_and_keeps_the_text_only_when_asked() -> None:
    ctx = RequestContext("r1", received_at=10.0, received_wall=1_777_000_000.0)
    ctx.first_token_at, ctx.first_answer_at, ctx.finished_at = 10.1, 10.25, 11.0
    ctx.key_name, ctx.user, ctx.route, ctx.model, ctx.stream = "team-a", "u-1", "hard", "m", True
    ctx.status, ctx.finish_reason, ctx.usage = 200, "stop", Usage(7, 9, 3)
    ctx.reasoning, ctx.thinking_truncated = AppliedReasoning("medium", "high", 4096), True
    ctx.upstream, ctx.retries, ctx.idempotency, ctx.tool_names = "fallback-1", 2, "replayed", ["a", "b"]
    ctx.image_count, ctx.prompt_text, ctx.answer_text = 2, "user: hi", "hello"
    row = row_from(ctx, UserHashes(b"k"))
    assert set(row) == set(COLUMNS)
    assert row["created_at"] == "2026-04-24T03:06:40+00:00"
    assert (row["ttft_ms"], row["ttfa_ms"], row["latency_ms"]) == (100.0, 250.0, 1000.0)
    assert row["upstream"] == "fallback-1" and row["retries"] == 2 and row["idempotent_replay"] is True
    assert row["thinking_budget"] == 4096 and row["thinking_truncated"] is True
    assert row["user_hash"] == hmac.new(b"k", b"u-1", hashlib.sha256).hexdigest()
    assert row["prompt"] is None and row["answer"] is None
    kept = row_from(ctx, UserHashes(b"k"), keep_text=True)
    assert (kept["prompt"], kept["answer"]) == ("user: hi", "hello")


def test_log_ids_are_uuid7_unique_and_increasing() -> None:
    first = [new_log_id() for _ in range(1000)]
    time.sleep(0.002)
    later = new_log_id()
    assert len(set(first)) == 1000 and all(len(i) == 32 for i in first)
    parsed = uuid.UUID(hex=later)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert max(first) < later  # a later millisecond sorts after (the index is appended to)
    assert abs(int(later[:12], 16) / 1000 - time.time()) < 60  # the time in ms comes first


def test_the_remembered_user_hashes_are_the_keyed_hashes_and_stay_bounded() -> None:
    hashes = UserHashes(b"k", size=3)
    for user in ("u-1", "u-2", "u-1", "u-3", "u-4", "u-1", "\ud800"):
        assert hashes(user) == user_hash(b"k", user)
        assert len(hashes._known) <= 3
    assert hashes(None) is None and hashes("") is None
    assert UserHashes(b"other")("u-1") != hashes("u-1")
    ctx = RequestContext("r", received_wall=1_777_000_000.0)
    ctx.user = "u-1"
    fresh = UserHashes(b"k")
    assert row_from(ctx, hashes)["user_hash"] == row_from(ctx, fresh)["user_hash"] == user_hash(b"k", "u-1")


def test_a_refused_request_still_makes_a_row() -> None:
    ctx = RequestContext("r2")
    ctx.finished_at, ctx.status, ctx.error_type = ctx.received_at + 0.001, 401, "invalid_api_key"
    row = row_from(ctx, UserHashes(b"k"))
    assert row["status"] == 401 and row["error_type"] == "invalid_api_key"
    assert row["user_hash"] is None and row["prompt_tokens"] is None and row["tool_names"] is None


def test_prepare_row_redacts_and_cuts_to_the_columns() -> None:
    row = {"request_id": "x" * 500, "prompt": f"mail {EMAIL} " + "a" * (2 * CAPTURE_CHARS),
           "answer": f"card {CARD}", "tool_names": ["t" * 100] * 100, "model": "m"}
    out = prepare_row(row)
    assert len(out["request_id"]) == 128
    assert out["prompt"].startswith("mail <EMAIL> ") and len(out["prompt"]) == TEXT_CHARS
    assert out["answer"] == "card <CARD>"
    assert len(out["tool_names"]) == 64 and all(len(t) == 64 for t in out["tool_names"])


def test_the_secret_is_made_once_owner_only_and_then_reused(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "request-log.secret"
    first = load_or_create_secret(path)
    assert len(first) == 32 and path.stat().st_mode & 0o077 == 0
    assert load_or_create_secret(path) == first
    assert [p.name for p in path.parent.iterdir()] == ["request-log.secret"]  # no temporary file left


def test_a_given_secret_is_used_and_no_file_is_made(tmp_path: Path) -> None:
    log = open_request_log(RequestLogConfig(data_dir=tmp_path, secret="s3cret"))
    assert log.secret == b"s3cret"
    assert not (tmp_path / "request-log.secret").exists()
    assert log.writer.spill.path == tmp_path / "requests.db.spill.jsonl"
    assert log.store.path == (tmp_path / "requests.db").resolve()
    log.store.dispose()


def test_a_postgres_log_keeps_its_secret_and_spill_file_in_the_data_dir(tmp_path: Path) -> None:
    log = open_request_log(RequestLogConfig(db="postgresql://u@127.0.0.1:1/db", data_dir=tmp_path))
    assert (tmp_path / "request-log.secret").exists()
    assert log.writer.spill.path == tmp_path / "requests-spill.jsonl"
    log.store.dispose()
