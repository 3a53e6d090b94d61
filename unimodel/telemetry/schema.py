"""The request log's table and its ordered migrations.

``REQUESTS`` is the table as the code uses it now. :data:`MIGRATIONS` is the ordered list of steps that build
it, each applied once and recorded by name in ``_migrations`` (as simonw/llm does, rather than Alembic: one
table, a few steps, and no migration scripts to ship beside the package). A step never changes: a later change
to the table is a new step (``ALTER TABLE …``) and a new ``requests_table_vN``, and the old function stays
frozen so a fresh database is still built by replaying every step.

Column names and JSON keys use the OpenAI API's words where it has one (``request_id``, ``model``,
``prompt_tokens``, ``reasoning_tokens``, ``completion_tokens``, ``finish_reason``); ``completion_tokens``
includes the reasoning tokens, as in the API's usage object.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    or_,
    text,
)

METADATA = MetaData()

#: longest stored value of each bounded text column (rows are cut to these before they are written)
TEXT_LIMITS = {"log_id": 32, "request_id": 128, "client_request_id": 128, "key_name": 64, "user_hash": 64,
               "route": 64, "model": 256, "upstream": 64, "reasoning_effort": 16, "model_effort": 16, "error_type": 64,
               "finish_reason": 32}


def _has_text(prompt: Any, answer: Any) -> Any:
    return or_(prompt.is_not(None), answer.is_not(None))


def requests_table_v1(metadata: MetaData) -> Table:
    """The ``requests`` table of migration 0001 (frozen: a change is a new migration)."""
    table = Table(
        "requests", metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("log_id", String(32), nullable=False, unique=True),  # the row's own id: a replay inserts it once
        Column("request_id", String(128), nullable=False),
        Column("created_at", DateTime(), nullable=False),  # when the request arrived, UTC
        Column("key_name", String(64)),
        Column("user_hash", String(64)),  # HMAC-SHA256 of the request's `user` with the server's secret
        Column("route", String(64)),
        Column("model", String(256)),  # the served model
        Column("upstream", String(64)),  # primary, canary, fallback-N or a named upstream (resilience)
        Column("retries", Integer),
        Column("idempotent_replay", Boolean, nullable=False, default=False),
        Column("stream", Boolean, nullable=False, default=False),
        Column("reasoning_effort", String(16)),  # requested (or the route's default)
        Column("model_effort", String(16)),  # what the model was told
        Column("thinking_budget", Integer),  # tokens; NULL: unbounded
        Column("thinking_truncated", Boolean),  # the budget cut the thinking
        Column("prompt_tokens", Integer),
        Column("reasoning_tokens", Integer),
        Column("completion_tokens", Integer),
        Column("tokens_estimated", Boolean),  # some count is the gateway's estimate, not the engine's
        Column("ttft_ms", Float),  # to the first token, reasoning included
        Column("ttfa_ms", Float),  # to the first answer token (content or tool call)
        Column("latency_ms", Float),
        Column("status", Integer, nullable=False),
        Column("error_type", String(64)),
        Column("finish_reason", String(32)),
        Column("tool_names", JSON),  # names of the tools the model called, in order
        Column("image_count", Integer),
        Column("prompt", Text),  # redacted; only with --log-prompts, and cleared after --prompt-retention
        Column("answer", Text),
        Index("ix_requests_created_at", "created_at"),
        Index("ix_requests_key_name_created_at", "key_name", "created_at"),
        Index("ix_requests_route_created_at", "route", "created_at"),
        Index("ix_requests_request_id", "request_id"),
    )
    # the rows the retention sweeper still has to empty, and only those
    has_text = _has_text(table.c.prompt, table.c.answer)
    Index("ix_requests_with_text", table.c.created_at, sqlite_where=has_text, postgresql_where=has_text)
    return table


def requests_table_v2(metadata: MetaData) -> Table:
    """Migration 0002: ``client_request_id``, the client's ``X-Request-Id`` beside our own ``request_id`` (which
    until then held the client's id when it sent one: a value any key could reuse)."""
    table = requests_table_v1(metadata)
    table.append_column(Column("client_request_id", String(128)))
    return table


def requests_table_v3(metadata: MetaData) -> Table:
    """Migration 0003: ``cached_tokens``, the prompt tokens the engine read from its prefix cache (an upstream's
    ``prompt_tokens_details.cached_tokens``; 0 from the local engine; NULL when not reported)."""
    table = requests_table_v2(metadata)
    table.append_column(Column("cached_tokens", Integer))
    return table


REQUESTS = requests_table_v3(METADATA)
HAS_TEXT = _has_text(REQUESTS.c.prompt, REQUESTS.c.answer)
COLUMNS = tuple(c.name for c in REQUESTS.columns if c.name != "id")


@dataclass(frozen=True)
class Migration:
    name: str
    apply: Callable[[Connection], None]


def _create_requests_v1(conn: Connection) -> None:
    requests_table_v1(MetaData()).create(conn)


def _add_client_request_id(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE requests ADD COLUMN client_request_id VARCHAR(128)"))


def _add_cached_tokens(conn: Connection) -> None:
    conn.execute(text("ALTER TABLE requests ADD COLUMN cached_tokens INTEGER"))


MIGRATIONS: Sequence[Migration] = (
    Migration("0001_requests", _create_requests_v1),
    Migration("0002_client_request_id", _add_client_request_id),
    Migration("0003_cached_tokens", _add_cached_tokens),
)
