"""Fixtures of the request-log tests: a database URL on SQLite and on PostgreSQL, and rows to write."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.support.postgres_server import PostgresServer


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a SQLite file, or a new database in the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'requests.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.create_database()


def make_row(n: int = 0, **overrides: Any) -> dict[str, Any]:
    """A row as the observer makes it (``created_at`` ``n`` seconds after a fixed time)."""
    created = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc) + timedelta(seconds=n)
    row: dict[str, Any] = {
        "log_id": uuid.uuid4().hex, "request_id": f"req-{n}", "created_at": created.isoformat(),
        "key_name": "team-a", "user_hash": None, "route": "default", "model": "mistral-small-4",
        "upstream": "primary", "retries": 0, "idempotent_replay": False, "stream": False,
        "reasoning_effort": "none", "model_effort": "none", "thinking_budget": None, "thinking_truncated": False,
        "prompt_tokens": 10, "reasoning_tokens": 0, "completion_tokens": 5, "tokens_estimated": False,
        "ttft_ms": 20.0, "ttfa_ms": 20.0, "latency_ms": 100.0, "status": 200, "error_type": None,
        "finish_reason": "stop", "tool_names": None, "image_count": 0, "prompt": None, "answer": None,
    }
    row.update(overrides)
    return row
