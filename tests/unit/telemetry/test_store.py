"""The request log's store on SQLite and PostgreSQL: ordered migrations, each row once, queries, retention."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import DataError, IntegrityError

from tests.unit.telemetry.conftest import make_row
from unimodel.telemetry.schema import MIGRATIONS, Migration
from unimodel.telemetry.store import LogStore, LogStoreError, database_url, default_data_dir
from unimodel.telemetry.sweeper import PromptSweeper


@pytest.fixture()
def store(db_url: str) -> Iterator[LogStore]:
    s = LogStore(database_url(db_url, Path("/nonexistent")))
    yield s
    s.dispose()


def test_migrations_apply_once_in_order(store: LogStore) -> None:
    assert store.migrate() == [m.name for m in MIGRATIONS]
    assert store.migrate() == []
    calls: list[str] = []

    def step(name: str) -> Migration:
        def apply(conn: Connection) -> None:
            calls.append(name)
            conn.execute(text(f"ALTER TABLE requests ADD COLUMN {name.split('_', 1)[1]} INTEGER"))
        return Migration(name, apply)

    later = [*MIGRATIONS, step("0098_extra_a"), step("0099_extra_b")]
    assert store.migrate(later) == ["0098_extra_a", "0099_extra_b"]
    assert calls == ["0098_extra_a", "0099_extra_b"]
    assert store.migrate(later) == []
    assert store.applied_migrations() == [*(m.name for m in MIGRATIONS), "0098_extra_a", "0099_extra_b"]


def test_a_database_of_the_first_schema_gains_client_request_id(store: LogStore) -> None:
    assert store.migrate(MIGRATIONS[:1]) == ["0001_requests"]  # as an older server left it, with a row
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO requests (log_id, request_id, created_at, status, idempotent_replay, stream) "
                          "VALUES ('old-row', 'theirs', :c, 200, false, false)"), {"c": "2026-05-01 12:00:00.000000"})
    assert store.migrate() == [m.name for m in MIGRATIONS[1:]]  # 0002_client_request_id and every later one
    store.insert([make_row(2, request_id="ours", client_request_id="theirs")])
    rows = {r["request_id"]: r for r in store.rows()}
    assert rows["theirs"]["client_request_id"] is None and rows["ours"]["client_request_id"] == "theirs"


def test_a_database_of_the_second_schema_gains_cached_tokens(store: LogStore) -> None:
    assert store.migrate(MIGRATIONS[:2]) == ["0001_requests", "0002_client_request_id"]
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO requests (log_id, request_id, created_at, status, idempotent_replay, stream) "
                          "VALUES ('old-row', 'old', :c, 200, false, false)"), {"c": "2026-05-01 12:00:00.000000"})
    assert "0003_cached_tokens" in store.migrate()
    store.insert([make_row(2, request_id="new", cached_tokens=96)])
    rows = {r["request_id"]: r for r in store.rows()}
    assert rows["old"]["cached_tokens"] is None and rows["new"]["cached_tokens"] == 96


def test_a_failing_migration_applies_nothing(store: LogStore) -> None:
    store.migrate()

    def broken(conn: Connection) -> None:
        conn.execute(text("ALTER TABLE requests ADD COLUMN half_done INTEGER"))
        raise RuntimeError("step failed midway")

    with pytest.raises(RuntimeError):
        store.migrate([*MIGRATIONS, Migration("0099_broken", broken)])
    assert store.applied_migrations() == [m.name for m in MIGRATIONS]
    assert store.migrate([*MIGRATIONS, Migration("0099_fixed", lambda c: None)]) == ["0099_fixed"]


def test_a_row_is_stored_once_even_when_its_batch_is_written_twice(store: LogStore) -> None:
    store.migrate()
    rows = [make_row(i, tool_names=["get_weather"] if i == 1 else None) for i in range(5)]
    store.insert(rows)
    store.insert(rows[2:] + [make_row(9)])  # a replay of an unacknowledged batch, plus one new row
    assert store.count() == 6
    got = store.rows(newest_first=False)
    assert [r["request_id"] for r in got] == ["req-0", "req-1", "req-2", "req-3", "req-4", "req-9"]
    assert got[1]["tool_names"] == ["get_weather"]
    assert got[0]["created_at"] == "2026-05-01T12:00:00+00:00"
    assert got[0]["idempotent_replay"] is False and got[0]["status"] == 200


def test_values_are_stored_in_the_columns_types_and_a_refused_batch_raises_sqlalchemys_error(
        store: LogStore) -> None:
    store.migrate()
    store.insert([make_row(0, created_at="2026-05-01T14:00:00+02:00", tool_names=["a", "b\u00e9"],
                           thinking_truncated=True, ttft_ms=12)])
    [got] = store.rows()
    assert got["created_at"] == "2026-05-01T12:00:00+00:00"  # converted to UTC
    assert got["tool_names"] == ["a", "b\u00e9"] and got["thinking_truncated"] is True and got["ttft_ms"] == 12.0
    # a refusal for the data must be SQLAlchemy's IntegrityError/DataError (the writer then goes row by row),
    # with the row's values kept out of the message
    with pytest.raises((IntegrityError, DataError)) as refused:
        store.insert([make_row(1, request_id="secret-value"), make_row(2, status=None)])
    assert "secret-value" not in str(refused.value)
    assert store.count() == 1  # the batch is one transaction: its good row is not stored either


def test_queries_filter_by_time_route_and_key(store: LogStore) -> None:
    store.migrate()
    store.insert([make_row(0, route="hard"), make_row(60, key_name="team-b"), make_row(120),
                  make_row(180, route="hard", key_name="team-b")])
    since = datetime(2026, 5, 1, 12, 1, tzinfo=timezone.utc)
    assert [r["request_id"] for r in store.rows(since=since)] == ["req-180", "req-120", "req-60"]
    assert [r["request_id"] for r in store.rows(route="hard")] == ["req-180", "req-0"]
    assert [r["request_id"] for r in store.rows(key="team-b", route="hard")] == ["req-180"]
    assert [r["request_id"] for r in store.rows(limit=2)] == ["req-180", "req-120"]
    assert store.rows(columns=("status", "latency_ms"), limit=1) == [{"status": 200, "latency_ms": 100.0}]


def test_the_sweeper_empties_old_prompts_and_keeps_the_rows(store: LogStore) -> None:
    store.migrate()
    now = datetime(2026, 5, 31, 12, 0, tzinfo=timezone.utc)
    store.insert([
        make_row(0, prompt="user: <EMAIL> asked", answer="an answer"),  # 30 days before `now`
        make_row(29 * 86400, prompt="user: recent", answer="recent answer"),
        make_row(1, prompt=None, answer=None),
    ])
    sweeper = PromptSweeper(store, retention_days=7)
    assert sweeper.sweep_once(now) == 1
    assert sweeper.sweep_once(now) == 0
    rows = {r["request_id"]: r for r in store.rows()}
    assert rows["req-0"]["prompt"] is None and rows["req-0"]["answer"] is None
    assert rows["req-0"]["prompt_tokens"] == 10  # the row itself stays
    assert rows[f"req-{29 * 86400}"]["prompt"] == "user: recent"
    assert sweeper.sweep_once(now + timedelta(days=6)) == 0
    assert sweeper.sweep_once(now + timedelta(days=8)) == 1
    assert store.count() == 3


def test_sqlite_runs_in_wal_mode_with_owner_only_files(tmp_path: Path) -> None:
    store = LogStore(database_url(str(tmp_path / "deep" / "log.db"), tmp_path))
    store.migrate()
    store.insert([make_row(0)])
    path = tmp_path / "deep" / "log.db"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert path.stat().st_mode & 0o077 == 0
    assert (tmp_path / "deep").stat().st_mode & 0o077 == 0
    store.dispose()


def test_database_urls(tmp_path: Path) -> None:
    assert database_url(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/requests.db"
    assert database_url("logs/x.db", tmp_path).startswith("sqlite:////")
    assert database_url("postgresql://u:p@h/db", tmp_path) == "postgresql+psycopg://u:p@h/db"
    assert database_url("postgres://h/db", tmp_path) == "postgresql+psycopg://h/db"
    with pytest.raises(LogStoreError):
        database_url("mysql://h/db", tmp_path)
    assert default_data_dir(tmp_path / "d") == tmp_path / "d"
    shown = LogStore("postgresql+psycopg://u:secret@127.0.0.1/db").display_url
    assert shown == "postgresql+psycopg://u:***@127.0.0.1/db"


def test_making_a_database_private_never_drops_the_locks_of_our_open_connections(tmp_path: Path) -> None:
    """POSIX drops every lock a process holds on a file when it closes any descriptor of it: reopening the
    database to make it private let another process write beside our own transaction (a corrupt database when
    the request log and the stored responses shared one file). While we hold a write lock, another process
    must still be told the database is locked."""
    import sqlite3
    import subprocess
    import sys

    from unimodel.telemetry.store import make_private

    db = tmp_path / "requests.db"
    make_private(db)  # a new file: made here, owner-only
    assert db.stat().st_mode & 0o777 == 0o600
    ours = sqlite3.connect(db, isolation_level=None)
    ours.execute("CREATE TABLE t (x INTEGER)")
    ours.execute("BEGIN IMMEDIATE")  # our write lock
    ours.execute("INSERT INTO t VALUES (1)")
    make_private(db)  # what every new connection of either store does first
    other = subprocess.run(
        [sys.executable, "-c", "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=0, "
         "isolation_level=None); c.execute('BEGIN IMMEDIATE'); print('wrote')", str(db)],
        capture_output=True, text=True, timeout=60)
    ours.execute("COMMIT")
    ours.close()
    assert "database is locked" in other.stderr and "wrote" not in other.stdout, (other.stdout, other.stderr)
