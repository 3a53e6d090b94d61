"""The background writer: batches, buffers while the database is down, spills, replays in order, loses nothing."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from tests.unit.telemetry.conftest import make_row
from unimodel.telemetry.schema import MIGRATIONS, Migration
from unimodel.telemetry.spill import SpillFile
from unimodel.telemetry.store import LogStore
from unimodel.telemetry.writer import LogWriter


class SwitchableStore(LogStore):
    """A real SQLite store that can be made to fail like a database that is down, and records its batches."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.down = threading.Event()
        self.batches: list[int] = []

    def _check(self) -> None:
        if self.down.is_set():
            raise OperationalError("INSERT", {}, ConnectionRefusedError("connection refused"))

    def migrate(self, migrations: Sequence[Migration] = MIGRATIONS) -> list[str]:
        self._check()
        return super().migrate(migrations)

    def insert(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._check()
        super().insert(rows)
        self.batches.append(len(rows))


@pytest.fixture()
def store(tmp_path: Path) -> Iterator[SwitchableStore]:
    s = SwitchableStore(f"sqlite:///{tmp_path / 'requests.db'}")
    yield s
    s.dispose()


def writer_for(store: LogStore, tmp_path: Path, **kwargs: Any) -> LogWriter:
    kwargs = {"flush_interval_s": 0.05, "retry_min_s": 0.05, "retry_max_s": 0.1, **kwargs}
    return LogWriter(store, SpillFile(tmp_path / "spill.jsonl"), **kwargs)


def ids(store: LogStore) -> list[str]:
    return [r["request_id"] for r in store.rows(newest_first=False, columns=("request_id",))]


def test_a_full_batch_is_written_without_waiting_for_the_interval(store: SwitchableStore, tmp_path: Path) -> None:
    writer = writer_for(store, tmp_path, batch_rows=3, flush_interval_s=3600)
    writer.start()
    try:
        assert writer.wait_idle(10)  # the start-up pass: migrations
        for batch in range(2):  # each third row wakes the writer, which would otherwise sleep for an hour
            for i in range(3 * batch, 3 * batch + 3):
                writer.submit(make_row(i))
            assert writer.wait_idle(10)
        assert ids(store) == [f"req-{i}" for i in range(6)]
        assert store.batches == [3, 3]
    finally:
        writer.stop()


def test_a_partial_batch_is_written_after_the_interval(store: SwitchableStore, tmp_path: Path) -> None:
    writer = writer_for(store, tmp_path, batch_rows=100, flush_interval_s=0.05)
    writer.start()
    try:
        writer.submit(make_row(0))
        assert writer.wait_idle(10)
        assert ids(store) == ["req-0"] and store.batches == [1]
    finally:
        writer.stop()


def test_rows_wait_in_the_buffer_then_spill_then_come_back_in_order(store: SwitchableStore, tmp_path: Path) -> None:
    store.down.set()  # down from the start: not even the migrations can run
    writer = writer_for(store, tmp_path, batch_rows=4, buffer_rows=5)
    writer.start()
    try:
        for i in range(12):
            writer.submit(make_row(i))
        deadline_ok = _wait(lambda: writer.spilled == 7)
        assert deadline_ok, writer.spilled
        assert writer.db_up is False
        assert writer.spill.count() == 7
        spilled = [json.loads(line)["request_id"] for line in writer.spill.path.read_text().splitlines()]
        assert spilled == [f"req-{i}" for i in range(7)]  # the oldest went to disk
        for i in range(12, 15):  # still down: the newer rows queue behind
            writer.submit(make_row(i))
        store.down.clear()
        assert writer.wait_idle(10)
        assert ids(store) == [f"req-{i}" for i in range(15)]
        assert not writer.spill.path.exists()
        assert writer.dropped == 0 and writer.written == 15 and writer.replayed == writer.spilled
    finally:
        writer.stop()


def test_a_writer_stopped_while_the_database_is_down_spills_all_and_the_next_one_replays(
        store: SwitchableStore, tmp_path: Path) -> None:
    first = writer_for(store, tmp_path)
    first.start()
    assert first.wait_idle(10)
    store.insert([make_row(0), make_row(1)])
    store.down.set()
    for i in range(2, 10):
        first.submit(make_row(i))
    first.stop()
    assert first.spill.count() == 8
    # the first two rows of the spill were in fact stored before the outage (a lost acknowledgement): once only
    store.down.clear()
    store.insert([json.loads(line) for line in first.spill.path.read_text().splitlines()[:2]])
    second = writer_for(store, tmp_path)
    second.start()
    try:
        assert second.wait_idle(10)
        assert ids(store) == ["req-0", "req-1", "req-2", "req-3"] + [f"req-{i}" for i in range(4, 10)]
        assert second.replayed == 8 and not second.spill.path.exists()
    finally:
        second.stop()


def test_stop_writes_what_is_queued(store: SwitchableStore, tmp_path: Path) -> None:
    writer = writer_for(store, tmp_path, flush_interval_s=3600, batch_rows=1000)
    writer.start()
    for i in range(20):
        writer.submit(make_row(i))
    writer.stop()
    assert ids(store) == [f"req-{i}" for i in range(20)]
    assert not writer.spill.path.exists()


def test_a_torn_spill_line_is_skipped_and_the_rest_replayed(store: SwitchableStore, tmp_path: Path) -> None:
    spill = SpillFile(tmp_path / "spill.jsonl")
    spill.append([make_row(0), make_row(1)])
    with open(spill.path, "a") as f:
        f.write('{"log_id": "torn by a cra')  # a crash in the middle of an append
    SpillFile(spill.path).append([make_row(2)])  # a later process appends after it
    writer = writer_for(store, tmp_path)
    writer.start()
    try:
        assert writer.wait_idle(10)
        assert ids(store) == ["req-0", "req-1", "req-2"]
        assert writer.spill.skipped == 1
    finally:
        writer.stop()


def test_a_row_the_database_refuses_does_not_stall_the_others(store: SwitchableStore, tmp_path: Path) -> None:
    writer = writer_for(store, tmp_path, batch_rows=10)
    writer.start()
    try:
        writer.submit(make_row(0))
        writer.submit(make_row(1, status=None))  # NOT NULL: refused for its data, not for an outage
        writer.submit(make_row(2))
        assert writer.wait_idle(10)
        assert ids(store) == ["req-0", "req-2"]
        assert writer.rejected == 1 and writer.db_up is True
    finally:
        writer.stop()


def test_prepare_runs_in_the_writer_before_rows_touch_disk(store: SwitchableStore, tmp_path: Path) -> None:
    seen: list[str] = []

    def prepare(row: dict[str, Any]) -> dict[str, Any]:
        seen.append(threading.current_thread().name)
        return {**row, "prompt": "prepared"}

    store.down.set()
    writer = writer_for(store, tmp_path, prepare=prepare, buffer_rows=1)
    writer.start()
    try:
        writer.submit(make_row(0, prompt="raw"))
        writer.submit(make_row(1, prompt="raw"))
        assert _wait(lambda: writer.spilled == 1)
        assert "raw" not in writer.spill.path.read_text()
        store.down.clear()
        assert writer.wait_idle(10)
        assert {r["prompt"] for r in store.rows()} == {"prepared"}
        assert set(seen) == {"request-log-writer"}
    finally:
        writer.stop()


def test_a_full_queue_drops_and_counts_instead_of_blocking(store: SwitchableStore, tmp_path: Path) -> None:
    writer = writer_for(store, tmp_path, max_queued=3)  # never started: nothing drains the queue
    for i in range(5):
        writer.submit(make_row(i))
    assert writer.dropped == 2


def _wait(predicate: Any, timeout_s: float = 10.0) -> bool:
    event = threading.Event()
    deadline = 0.0
    while deadline < timeout_s:
        if predicate():
            return True
        event.wait(0.02)
        deadline += 0.02
    return bool(predicate())


def test_two_writers_on_one_spill_path_keep_apart_and_the_survivor_adopts_what_is_left(
        store: SwitchableStore, tmp_path: Path) -> None:
    first, second = writer_for(store, tmp_path), writer_for(store, tmp_path)
    first.start()
    second.start()
    try:
        assert first.wait_idle(10) and second.wait_idle(10)
        assert first.spill.path == tmp_path / "spill.jsonl"
        assert second.spill.path != first.spill.path and second.spill.path.parent == tmp_path
        store.down.set()
        for i in range(3):
            first.submit(make_row(i, request_id=f"first-{i}"))
            second.submit(make_row(i, request_id=f"second-{i}"))
        second.stop()  # its server stops while the database is down: its rows stay in its own file
        assert second.spill.count() == 3 and second.spill.path.exists()
        assert _wait(lambda: first.db_up is False)
        store.down.clear()
        assert first.wait_idle(10)
        assert sorted(ids(store)) == ["first-0", "first-1", "first-2", "second-0", "second-1", "second-2"]
        assert not second.spill.path.exists()
        assert [p.name for p in tmp_path.iterdir() if "spill" in p.name] == ["spill.jsonl.lock"]
    finally:
        first.stop()


@pytest.mark.parametrize("bad", [{"x": 1}, {"log_id": "f" * 32, "request_id": "bad", "created_at": "yesterday"},
                                 {"log_id": "e" * 32, "request_id": "bad", "created_at": 17}])
def test_a_malformed_row_in_the_spill_file_is_dropped_alone_and_the_log_goes_on(
        store: SwitchableStore, tmp_path: Path, bad: dict[str, Any]) -> None:
    spill = SpillFile(tmp_path / "spill.jsonl")
    spill.path.write_text("".join(json.dumps(r) + "\n" for r in [make_row(0), bad, make_row(1)]))
    writer = writer_for(store, tmp_path)
    writer.start()
    try:
        writer.submit(make_row(2))
        assert writer.wait_idle(10)
        assert ids(store) == ["req-0", "req-1", "req-2"]
        assert writer.rejected == 1 and writer.db_up is True and not writer.spill.path.exists()
    finally:
        writer.stop()
