"""The request log: one row per request, written by a background writer, with no raw personal data.

:class:`RequestLog` is an end-of-request observer (``service/observer.py``). On the event loop it only builds
a dict from the finished context (no I/O) and queues it; the writer thread redacts the prompt and answer (when
``--log-prompts`` put them in the context), cuts text to the column sizes, and writes. The request's ``user``
is stored as ``user_hash``, an HMAC-SHA256 with the server's secret (``--log-secret``, or one generated once
and kept beside the database with owner-only permissions), so one user's requests can be grouped without the
log holding who they are. Prompts and answers are stored only with ``--log-prompts``, redacted before they
reach the database or the spill file, and emptied after ``--prompt-retention`` days by the sweeper.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from unimodel.printable import printable
from unimodel.redaction import redact
from unimodel.service.context import RequestContext
from unimodel.telemetry.schema import TEXT_LIMITS
from unimodel.telemetry.spill import SpillFile
from unimodel.telemetry.store import LogStore, database_url, default_data_dir
from unimodel.telemetry.sweeper import PromptSweeper
from unimodel.telemetry.writer import LogWriter

log = logging.getLogger("unimodel.request_log")

SECRET_FILE = "request-log.secret"
SPILL_FILE = "requests-spill.jsonl"
#: the most prompt or answer text kept per request (after redaction; the capture keeps a little more, so a
#: value cut at the capture's end is redacted whole or dropped with the last ``CUT_MARGIN`` characters)
TEXT_CHARS = 16_384
CAPTURE_CHARS = TEXT_CHARS + 1024
#: what is dropped from the end of a redacted text that filled the capture: longer than any value cut in two
CUT_MARGIN = 512


@dataclass(frozen=True)
class RequestLogConfig:
    """Where and how to log; ``server/app.py`` fills it from the settings."""

    db: Optional[str] = None  # --log-db; None: requests.db in data_dir
    data_dir: Optional[Path] = None  # None: the platform's user data dir
    log_prompts: bool = False
    prompt_retention_days: float = 30.0
    secret: Optional[str] = None  # --log-secret; None: generated once, kept beside the database
    buffer_rows: int = 10_000
    spill_path: Optional[Path] = None  # None: beside the database


def user_hash(secret: bytes, user: Optional[str]) -> Optional[str]:
    if not user:
        return None
    return hmac.new(secret, user.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


class UserHashes:
    """:func:`user_hash` with one secret, remembered for the last ``size`` distinct users (the same few users
    send most requests; an HMAC costs more than the rest of the row). The values are the keyed hashes, so the
    memory holds nothing the requests in flight do not; the table is emptied when full (bounded, no LRU)."""

    def __init__(self, secret: bytes, size: int = 4096) -> None:
        self.secret = secret
        self.size = size
        self._known: dict[str, Optional[str]] = {}  # never a None value: ``user`` is not empty

    def __call__(self, user: Optional[str]) -> Optional[str]:
        if not user:
            return None
        known = self._known.get(user)
        if known is None:
            if len(self._known) >= self.size:
                self._known.clear()
            known = self._known[user] = user_hash(self.secret, user)
        return known


def new_log_id() -> str:
    """A UUIDv7 (RFC 9562) as 32 hex digits: the time in ms, then 74 random bits. Unique across replicas as a
    UUIDv4 is, but increasing, so each new row lands at the end of the unique ``log_id`` index instead of on a
    random page of it (less for the database to write per row, more so as the table grows)."""
    rand = int.from_bytes(os.urandom(10), "big")
    value = ((time.time_ns() // 1_000_000) & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 62 & 0xFFF) << 64
    return f"{value | 0b10 << 62 | rand & _RAND_B:032x}"


_RAND_B = (1 << 62) - 1


def row_from(ctx: RequestContext, user_hashes: UserHashes, keep_text: bool = False) -> dict[str, Any]:
    """The log row of a finished request: cheap (no I/O, no regex), run on the event loop. ``prompt`` and
    ``answer`` are still raw here; :func:`prepare_row` redacts them in the writer thread. ``user_hashes``
    makes ``user_hash`` with the log's secret."""
    usage, reasoning, tools = ctx.usage, ctx.reasoning, ctx.tool_names
    return {
        "log_id": new_log_id(),
        "request_id": ctx.request_id,
        "client_request_id": ctx.client_request_id,
        "created_at": datetime.fromtimestamp(ctx.received_wall, timezone.utc).isoformat(),
        "key_name": ctx.key_name,
        "user_hash": user_hashes(ctx.user),
        "route": ctx.route,
        "model": ctx.model,
        "upstream": ctx.upstream,
        "retries": ctx.retries,
        "idempotent_replay": ctx.idempotency == "replayed",
        "stream": ctx.stream,
        "reasoning_effort": reasoning.effort if reasoning else None,
        "model_effort": (reasoning.model_effort or "default") if reasoning else None,
        "thinking_budget": reasoning.budget if reasoning else None,
        "thinking_truncated": ctx.thinking_truncated if reasoning else None,
        "prompt_tokens": usage.prompt_tokens if usage else None,
        "reasoning_tokens": usage.reasoning_tokens if usage else None,
        "completion_tokens": usage.completion_tokens if usage else None,
        "tokens_estimated": usage.estimated if usage else None,
        "cached_tokens": usage.cached_tokens if usage else None,
        "ttft_ms": ctx.ttft_ms,
        "ttfa_ms": ctx.ms_since_arrival(ctx.first_answer_at),
        "latency_ms": ctx.latency_ms,
        "status": ctx.status,
        "error_type": ctx.error_type,
        "finish_reason": ctx.finish_reason,
        "tool_names": list(tools) if tools else None,
        "image_count": ctx.image_count,
        "prompt": ctx.prompt_text if keep_text else None,
        "answer": ctx.answer_text if keep_text else None,
    }


def prepare_row(row: dict[str, Any]) -> dict[str, Any]:
    """Redact ``prompt``/``answer``, escape the control characters of every short text (a model id or finish
    reason an upstream chose, printed later by ``unimodel logs``) and cut it to its column (in the writer
    thread)."""
    out = dict(row)
    for name in ("prompt", "answer"):
        text = out.get(name)
        if text is not None:
            out[name] = stored_text(str(text))
    for name, limit in TEXT_LIMITS.items():
        value = out.get(name)
        if isinstance(value, str):
            out[name] = printable(value[:limit])[:limit]
    tools = out.get("tool_names")
    if tools:
        out["tool_names"] = [printable(str(t)[:64])[:64] for t in tools[:64]]
    return out


def stored_text(text: str) -> str:
    """A prompt or answer as the log keeps it: redacted, at most ``TEXT_CHARS``. A text that fills the capture
    was cut there, maybe inside a value (half a card no longer passes Luhn), and redaction may have shortened
    what came before, pulling that half into the kept part: the last ``CUT_MARGIN`` characters of the redacted
    text are dropped then."""
    out = redact(text[:CAPTURE_CHARS])
    if len(text) >= CAPTURE_CHARS:
        out = out[:len(out) - CUT_MARGIN]
    return out[:TEXT_CHARS]


def load_or_create_secret(path: Path) -> bytes:
    """The HMAC secret kept in ``path``: read it, or make 32 random bytes and create the file (owner-only,
    atomically, so replicas starting together on one disk agree on one secret)."""
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (secrets.token_hex(32) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process made it first: then theirs is the secret
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    """The secret of ``path``; a file of ours others may read (copied with ``cp`` under umask 022, say) is made
    owner-only first: with the secret, the user hashes of the log can be tried against a list of users."""
    with open(path, "rb") as f:
        info = os.fstat(f.fileno())
        if info.st_mode & 0o077 and info.st_uid == os.geteuid():
            os.fchmod(f.fileno(), info.st_mode & 0o700)
            log.warning("request log: %s was readable by others (mode %04o); made owner-only", path,
                        info.st_mode & 0o777)
        return bytes.fromhex(f.read().decode("ascii").strip())


class RequestLog:
    """The observer, its writer and its prompt sweeper; ``start``/``aclose`` follow the server's lifespan."""

    def __init__(self, writer: LogWriter, secret: bytes, *, log_prompts: bool = False,
                 sweeper: Optional[PromptSweeper] = None) -> None:
        self.writer = writer
        self.secret = secret
        self.log_prompts = log_prompts
        self.sweeper = sweeper
        self._user_hashes = UserHashes(secret)
        self._sweeping: Optional[asyncio.Task[None]] = None

    @property
    def store(self) -> LogStore:
        return self.writer.store

    def request_finished(self, ctx: RequestContext) -> None:
        self.writer.submit(row_from(ctx, self._user_hashes, self.log_prompts))

    async def start(self) -> None:
        self.writer.start()
        if self.sweeper is not None:
            self._sweeping = asyncio.create_task(self.sweeper.run(self.writer.schema_ready),
                                                 name="request-log-sweeper")

    async def aclose(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
            await asyncio.gather(self._sweeping, return_exceptions=True)
            self._sweeping = None
        await asyncio.to_thread(self.writer.stop)
        await asyncio.to_thread(self.store.dispose)


def open_request_log(config: RequestLogConfig) -> RequestLog:
    """Build the request log from its settings: the store (nothing is connected yet), the secret, the spill
    file's place and the writer. Reads or creates the secret file: call it at start-up, not per request."""
    data_dir = default_data_dir(config.data_dir)
    store = LogStore(database_url(config.db, data_dir))
    home = store.path.parent if store.path is not None else data_dir
    if config.secret:
        secret = config.secret.encode("utf-8")
    else:
        secret = load_or_create_secret(home / SECRET_FILE)
    spill_path = config.spill_path or (home / (store.path.name + ".spill.jsonl") if store.path else
                                       home / SPILL_FILE)
    writer = LogWriter(store, SpillFile(spill_path), buffer_rows=config.buffer_rows, prepare=prepare_row)
    sweeper = PromptSweeper(store, config.prompt_retention_days)
    return RequestLog(writer, secret, log_prompts=config.log_prompts, sweeper=sweeper)
