"""The request log's background writer: requests never wait on the database, and no row is lost.

The event loop calls :meth:`LogWriter.submit` (an append to a deque; no I/O, no lock held for long). One
writer thread does the rest:

1. every ``flush_interval_s``, or as soon as ``batch_rows`` rows are queued, it takes the queued rows,
   runs ``prepare`` on each (redaction happens here, off the event loop) and appends them to its buffer;
2. when the database is up it writes the spill file first (older rows, in order), then the buffer, in
   batches of ``batch_rows``, each batch one transaction; the database skips a ``log_id`` it already has,
   so a batch retried after a lost acknowledgement is stored once;
3. when a write fails the database is marked down and tried again after a backoff (``retry_min_s``
   doubling to ``retry_max_s``); meanwhile rows stay in the buffer, and past ``buffer_rows`` the oldest go
   to the spill file (JSON lines, already redacted), which is replayed when the database answers again,
   after any spill file another server left behind (``spill.py``);
4. on :meth:`stop` it writes what it holds if the database answers, and spills the rest.

A batch the database refuses for its data (a constraint, a value too long) is written row by row and the
rows it still refuses are counted in ``rejected`` and logged, so one bad row cannot stall the log. Rows are
dropped only if the queue to the writer passes ``max_queued`` (the writer thread is stuck beyond its
database timeouts) or the spill file cannot be written either; both are counted in ``dropped`` and logged.
The migrations run on the first contact with the database (at start-up when it is up), so a server starts
even while its log database is down.

Written by hand: SQLAlchemy has no buffered writer, and a queue library would not know the spill file.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from itertools import islice
from typing import Any, Optional

from sqlalchemy.exc import DataError, IntegrityError

from unimodel.telemetry.spill import SpillFile
from unimodel.telemetry.store import LogStore, MalformedRowError

log = logging.getLogger("unimodel.request_log")

Row = dict[str, Any]


class LogWriter:
    def __init__(self, store: LogStore, spill: SpillFile, *, batch_rows: int = 200, flush_interval_s: float = 0.2,
                 buffer_rows: int = 10_000, max_queued: Optional[int] = None,
                 prepare: Optional[Callable[[Row], Row]] = None, retry_min_s: float = 0.25,
                 retry_max_s: float = 2.0, stop_timeout_s: float = 60.0) -> None:
        self.store = store
        self.spill = spill
        self.batch_rows = batch_rows
        self.flush_interval_s = flush_interval_s
        self.buffer_rows = buffer_rows
        self.max_queued = max_queued if max_queued is not None else max(4 * buffer_rows, 1000)
        self.prepare = prepare or (lambda row: row)
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.stop_timeout_s = stop_timeout_s
        self.written = 0  # rows stored (replayed ones included)
        self.replayed = 0  # of which came back from the spill file
        self.spilled = 0  # rows appended to the spill file
        self.rejected = 0  # rows the database refused for their data
        self.dropped = 0  # rows lost: queue overflow, or spill file not writable while the database was down
        self.db_up: Optional[bool] = None  # unknown until the first contact
        self._incoming: collections.deque[Row] = collections.deque()
        self._pending: collections.deque[Row] = collections.deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._idle = threading.Condition()
        self._thread: Optional[threading.Thread] = None
        self.schema_ready = threading.Event()  # the migrations ran: others may use the tables
        self._retry_at = 0.0
        self._retry_s = retry_min_s
        self._spill_failed = False

    # ---- the event loop's side ------------------------------------------------------------------------

    def submit(self, row: Row) -> None:
        """Queue one row (never blocks, never raises for a full queue: the row is counted as dropped)."""
        if len(self._incoming) >= self.max_queued:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.error("request log: the writer is stuck; %d rows dropped so far", self.dropped)
            return
        self._incoming.append(row)
        if len(self._incoming) >= self.batch_rows:
            self._wake.set()

    # ---- lifecycle ------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        try:
            self.spill.claim()  # once, at start-up: an open and a lock
        except OSError as exc:
            log.error("request log: cannot use the spill file %s: %s", self.spill.path, exc.strerror)
        self._thread = threading.Thread(target=self._run, name="request-log-writer", daemon=True)
        self._thread.start()
        self._wake.set()  # migrate and replay a leftover spill file now

    def stop(self) -> None:
        """Write or spill everything queued, then end the thread (blocking: call it with ``asyncio.to_thread``)."""
        if self._thread is None:
            return
        self._stopping.set()
        self._wake.set()
        self._thread.join(self.stop_timeout_s)
        if self._thread.is_alive():
            log.error("request log: the writer did not stop within %.0f s; %d rows may be lost",
                      self.stop_timeout_s, len(self._incoming) + len(self._pending))
        self._thread = None

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until every submitted row is in the database (nothing queued, buffered or spilled)."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while not self.idle():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.05))
        return True

    def idle(self) -> bool:
        return not self._incoming and not self._pending and not self.spill.has_rows() and self.db_up is True

    @property
    def buffered(self) -> int:
        """Rows queued or held in memory, neither in the database nor spilled yet (read by the metrics)."""
        return len(self._incoming) + len(self._pending)

    # ---- the writer thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self.spill.release()

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            stopping = self._stopping.is_set()
            try:
                self._intake()
                if self._db_due() or stopping:
                    self._write_all()
                if stopping:
                    self._intake()
                    if self._pending and self.db_up:
                        self._write_all()
                    self._spill_rows(len(self._pending))
                    return
            except Exception:  # a bug here must not end the thread: rows keep their place and it tries again
                log.exception("request log: the writer failed; it goes on")
                self._went_down(None)
            finally:
                with self._idle:
                    self._idle.notify_all()

    def _intake(self) -> None:
        while True:
            try:
                row = self._incoming.popleft()
            except IndexError:
                break
            try:
                self._pending.append(self.prepare(row))
            except Exception:
                log.exception("request log: preparing a row failed; stored without its prompt and answer")
                self._pending.append({**row, "prompt": None, "answer": None})
        if len(self._pending) > self.buffer_rows:
            self._spill_rows(len(self._pending) - self.buffer_rows)

    def _spill_rows(self, n: int) -> None:
        """Move the ``n`` oldest buffered rows to the spill file (kept in memory if it cannot be written)."""
        if n <= 0:
            return
        rows = list(islice(self._pending, n))
        try:
            self.spill.append(rows)
        except OSError as exc:
            if not self._spill_failed:
                log.error("request log: cannot write the spill file %s: %s", self.spill.path, exc.strerror)
                self._spill_failed = True
            hard_cap = 4 * self.buffer_rows
            while len(self._pending) > hard_cap:
                self._pending.popleft()
                self.dropped += 1
            return
        self._spill_failed = False
        for _ in rows:
            self._pending.popleft()
        self.spilled += len(rows)

    def _db_due(self) -> bool:
        return self.db_up is not False or time.monotonic() >= self._retry_at

    def _write_all(self) -> None:
        try:
            if not self.schema_ready.is_set():
                applied = self.store.migrate()
                self.schema_ready.set()
                if applied:
                    log.info("request log: applied migrations %s to %s", ", ".join(applied), self.store.display_url)
            if self.db_up is not True:  # first contact, or back from an outage: spill files left by others too
                for orphan in self.spill.orphans():
                    try:
                        self._replay(orphan)
                    finally:
                        orphan.release()
            self._replay(self.spill)
            while self._pending:
                batch = list(islice(self._pending, self.batch_rows))
                self._insert(batch)
                for _ in batch:
                    self._pending.popleft()
                self.written += len(batch)
                self._intake()
        except Exception as exc:  # the database is down, slow or refusing: keep the rows, try again later
            self._went_down(exc)
            return
        if self.db_up is False:
            log.warning("request log: the database %s answers again; the backlog is written", self.store.display_url)
        self.db_up = True
        self._retry_s = self.retry_min_s

    def _replay(self, spill: SpillFile) -> None:
        while spill.has_rows():
            rows, offset = spill.read(self.batch_rows)
            self._insert(rows)
            spill.done(offset)
            self.written += len(rows)
            self.replayed += len(rows)
            self._intake()

    def _went_down(self, exc: Optional[BaseException]) -> None:
        if self.db_up is not False:
            why = "" if exc is None else f": {type(exc).__name__}: {_first_line(exc)}"
            log.warning("request log: the database %s is unavailable%s; rows are buffered, then spilled to %s",
                        self.store.display_url, why, self.spill.path)
        self.db_up = False
        self._retry_at = time.monotonic() + self._retry_s
        self._retry_s = min(self._retry_s * 2, self.retry_max_s)

    def _insert(self, rows: list[Row]) -> None:
        """One transaction; a batch refused for its data (by the database, or malformed before it got there) is
        written row by row, dropping only the bad rows."""
        try:
            self.store.insert(rows)
        except (DataError, IntegrityError, MalformedRowError):
            for row in rows:
                try:
                    self.store.insert([row])
                except (DataError, IntegrityError, MalformedRowError) as exc:
                    self.rejected += 1
                    log.error("request log: the database refused the row of request %s: %s",
                              row.get("request_id"), _first_line(exc))


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()
    return text[0][:200] if text else type(orig).__name__
