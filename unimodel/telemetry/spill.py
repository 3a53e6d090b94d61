"""The spill file: request-log rows the database could not take yet, as JSON lines, oldest first.

The writer appends here when its in-memory buffer is full (the database is down or slow) and when it stops
with rows still unwritten; it replays the file, in order, before anything newer once the database answers
again. Rows are already redacted and hashed when they get here. A replay is read in chunks from an offset;
the file is removed once every line has been written, so a crash mid-replay replays from the start, and the
database's unique ``log_id`` makes that harmless. A torn last line (a crash mid-append) is skipped.

One file has one writer: a writer holds an exclusive ``flock`` on ``<file>.lock`` for its lifetime. When
another live writer (another server on the same data dir, in this process or not) holds the configured file,
this one takes a sibling, ``<file>.<pid>-<random>``. A file whose lock nobody holds is an orphan (its server
stopped while the database was down, or crashed): the next writer to reach the database adopts it and replays
it, so several servers sharing a data dir neither mix their files nor leave rows behind.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger("unimodel.request_log")


def _lock(path: Path) -> Optional[int]:
    """An exclusive, non-blocking lock on ``path`` (created); the descriptor, or ``None`` if it is held."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class SpillFile:
    """Append rows, read them back in order from an offset, and remove the file once all are replayed.

    Used from one thread only (the log writer's)."""

    def __init__(self, path: Path) -> None:
        self.base = Path(path)
        self.path = self.base  # a sibling when another writer holds the base (see :meth:`claim`)
        self.offset = 0  # bytes of the file already replayed into the database
        self.skipped = 0  # unreadable lines (torn by a crash)
        self._tail_checked = False
        self._lock_fd: Optional[int] = None

    @staticmethod
    def _lock_path(path: Path) -> Path:
        return path.with_name(path.name + ".lock")

    def claim(self) -> None:
        """Hold a spill file for this writer's lifetime: the configured one, or a sibling if it is in use."""
        if self._lock_fd is not None:
            return
        fd = _lock(self._lock_path(self.base))
        if fd is None:
            self.path = self.base.with_name(f"{self.base.name}.{os.getpid()}-{secrets.token_hex(4)}")
            fd = _lock(self._lock_path(self.path))
            assert fd is not None  # a fresh random name
        self._lock_fd = fd

    def release(self) -> None:
        """Let the file go (another writer may adopt what is left in it); a sibling's lock file is removed."""
        if self._lock_fd is None:
            return
        if self.path != self.base and not self.path.exists():
            self._lock_path(self.path).unlink(missing_ok=True)
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
        self._lock_fd = None

    def orphans(self) -> list["SpillFile"]:
        """The spill files beside this one that no live writer holds, now held by us (oldest first); replay
        each, then :meth:`release` it."""
        found: list[tuple[float, SpillFile]] = []
        candidates = [self.base, *self.base.parent.glob(self.base.name + ".*")]
        for path in candidates:
            if path == self.path or path.name.endswith(".lock") or not path.is_file():
                continue
            fd = _lock(self._lock_path(path))
            if fd is None:
                continue
            orphan = SpillFile(self.base)
            orphan.path, orphan._lock_fd = path, fd
            if orphan.has_rows():
                found.append((path.stat().st_mtime, orphan))
            else:
                orphan.release()
        return [orphan for _, orphan in sorted(found, key=lambda item: item[0])]

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        """Write ``rows`` at the end and fsync (a spill happens when something is already wrong)."""
        if not rows:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = "".join(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n" for row in rows)
        if not self._tail_checked:  # a line torn by an earlier crash must not swallow the first new row
            self._tail_checked = True
            if self._ends_torn():
                data = "\n" + data
        if not self.path.exists():
            self.offset = 0
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, data.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def _ends_torn(self) -> bool:
        try:
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() == 0:
                    return False
                f.seek(-1, os.SEEK_END)
                return f.read(1) != b"\n"
        except FileNotFoundError:
            return False

    def has_rows(self) -> bool:
        try:
            return self.path.stat().st_size > self.offset
        except FileNotFoundError:
            return False

    def read(self, max_rows: int) -> tuple[list[dict[str, Any]], int]:
        """Up to ``max_rows`` rows from the offset, and the offset after them (pass it to :meth:`done`)."""
        rows: list[dict[str, Any]] = []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            end = self.offset
            while len(rows) < max_rows:
                line = f.readline()
                if not line:
                    break
                end += len(line)
                if not line.endswith(b"\n") or not line.strip():
                    if line.strip():
                        self._skip("an unfinished line")
                    continue
                try:
                    row = json.loads(line)
                except ValueError:
                    self._skip("a line that is not JSON")
                    continue
                if isinstance(row, dict):
                    rows.append(row)
                else:
                    self._skip("a line that is not a row")
        return rows, end

    def done(self, offset: int) -> None:
        """The rows up to ``offset`` are in the database; remove the file once all of it is."""
        self.offset = offset
        try:
            if self.path.stat().st_size <= self.offset:
                self.path.unlink()
                self.offset = 0
        except FileNotFoundError:
            self.offset = 0

    def count(self) -> int:
        """Rows still waiting (a full read; for tests and the CLI)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                return sum(1 for line in f if line.strip())
        except FileNotFoundError:
            return 0

    def _skip(self, what: str) -> None:
        self.skipped += 1
        log.warning("request log: skipped %s in the spill file %s", what, self.path)
