"""Stored responses in the request log's database: SQLite by default, PostgreSQL with ``--log-db postgresql://…``.

The table is ``unimodel_responses``, one row per (response id, owner), with an index on ``expires_at`` for the
sweep; it is built by this module's own ordered migrations, recorded in the request log's ``_migrations`` table
under names of their own (``responses_…``) and applied the request log's way: the database is opened by the
request log's :class:`~unimodel.telemetry.store.LogStore` (the same URL forms, timeouts, SQLite in WAL with
owner-only files, PostgreSQL through psycopg, parameters hidden from error messages) and migrated by its
``migrate`` (under PostgreSQL's advisory lock, or SQLite's ``BEGIN IMMEDIATE``). A server whose database is down
at start-up still starts: the migrations run on the first call that reaches the database (so a server that
never stores a response never makes the table).

Every call is blocking I/O in a small thread pool of the store's own (not the event loop's default executor, so
a stuck database cannot take the threads other work needs); every wait is bounded by the connect and statement
timeouts, and every failure becomes :class:`~unimodel.errors.ResponseStoreUnavailableError`. Expired rows are
never read (each query asks for ``expires_at`` after now) and are deleted by a sweep once the store is in use,
then every ``sweep_interval_s``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Optional, TypeVar

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from unimodel.errors import ResponseStoreUnavailableError
from unimodel.printable import mask_urls_in
from unimodel.shapes.responses.store import Encoded, ResponseStore, Status, StoredResponse, decoded
from unimodel.telemetry.schema import Migration
from unimodel.telemetry.store import LogStore

log = logging.getLogger("unimodel.responses")

T = TypeVar("T")
TABLE = "unimodel_responses"
RETRY_AFTER_S = 2.0


def responses_table_v1(metadata: MetaData) -> Table:
    """The table of migration ``responses_0001`` (frozen: a change is a new migration)."""
    return Table(
        TABLE, metadata,
        Column("response_id", String(128), primary_key=True),
        Column("owner", String(128), primary_key=True),  # the key name; every query names it
        Column("created_at", DateTime(), nullable=False),  # UTC
        Column("expires_at", DateTime(), nullable=False),  # UTC
        Column("status", String(16), nullable=False),
        Column("input_bytes", Integer, nullable=False),  # the size of input_items (an update's bound)
        Column("response", Text, nullable=False),  # JSON
        Column("input_items", Text, nullable=False),  # JSON
        Index("ix_unimodel_responses_expires_at", "expires_at"),
    )


RESPONSES = responses_table_v1(MetaData())


def _create_v1(conn: Connection) -> None:
    responses_table_v1(MetaData()).create(conn)


MIGRATIONS = (Migration("responses_0001_table", _create_v1),)


def _utc(ts: float) -> datetime:
    """A naive UTC datetime (the request log's column form on both databases)."""
    return datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None)


def _ts(value: datetime) -> float:
    return value.replace(tzinfo=timezone.utc).timestamp()


class SqlResponseStore(ResponseStore):
    kind = "sql"

    def __init__(self, url: str, *, connect_timeout_s: float = 3.0, statement_timeout_s: float = 10.0,
                 sweep_interval_s: float = 3600.0, threads: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.db = LogStore(url, connect_timeout_s=connect_timeout_s, statement_timeout_s=statement_timeout_s)
        self.sweep_interval_s = sweep_interval_s
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="responses-store")
        self._schema_lock = threading.Lock()
        self._schema_ready = False
        self._down = False  # the last call failed: logged once until one succeeds
        self._sweeping: Optional[asyncio.Task[None]] = None
        dialect_insert = postgresql.insert if self.db.dialect == "postgresql" else sqlite.insert
        insert = dialect_insert(RESPONSES)
        self._upsert = insert.on_conflict_do_update(
            index_elements=["response_id", "owner"],
            set_={name: insert.excluded[name] for name in
                  ("created_at", "expires_at", "status", "input_bytes", "response", "input_items")})

    @property
    def display_url(self) -> str:
        return self.db.display_url

    # ---- lifecycle ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._sweeping is None:
            self._sweeping = asyncio.create_task(self._sweep_loop(), name="responses-store-sweeper")

    async def aclose(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
            await asyncio.gather(self._sweeping, return_exceptions=True)
            self._sweeping = None
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        await asyncio.to_thread(self.db.dispose)

    async def _sweep_loop(self) -> None:
        while not self._schema_ready:  # not before the store is first used: a server that never stores a
            await asyncio.sleep(5.0)   # response makes no table (nor, on SQLite, a database file)
        while True:
            try:
                dropped = await self.sweep()
                if dropped:
                    log.info("stored responses: deleted %d expired", dropped)
            except ResponseStoreUnavailableError:
                pass  # logged by _call; the next pass tries again
            await asyncio.sleep(self.sweep_interval_s)

    async def sweep(self) -> int:
        return await self._call(self._sweep_sync, self.clock())

    # ---- the backend -------------------------------------------------------------------------------------------

    async def _put(self, record: StoredResponse, encoded: Encoded) -> None:
        await self._call(self._put_sync, record, encoded)

    async def _get(self, owner: str, response_id: str, now: float) -> Optional[StoredResponse]:
        return await self._call(self._get_sync, owner, response_id, now)

    async def _update(self, owner: str, response_id: str, status: Status, response: Optional[bytes],
                      expect: Optional[frozenset[str]], now: float) -> bool:
        return await self._call(self._update_sync, owner, response_id, status, response, expect, now)

    async def _delete(self, owner: str, response_id: str, now: float) -> bool:
        return await self._call(self._delete_sync, owner, response_id, now)

    # ---- in the store's threads --------------------------------------------------------------------------------

    def _put_sync(self, record: StoredResponse, encoded: Encoded) -> None:
        values = {"response_id": record.response_id, "owner": record.owner,
                  "created_at": _utc(record.created_at), "expires_at": _utc(record.expires_at),
                  "status": record.status, "input_bytes": len(encoded.input_items),
                  "response": encoded.response.decode("utf-8"), "input_items": encoded.input_items.decode("utf-8")}
        with self.db.engine.begin() as conn:
            conn.execute(self._upsert, values)

    def _get_sync(self, owner: str, response_id: str, now: float) -> Optional[StoredResponse]:
        t = RESPONSES.c
        stmt = (select(t.created_at, t.expires_at, t.status, t.response, t.input_items)
                .where(t.response_id == response_id, t.owner == owner, t.expires_at > _utc(now)))
        with self.db.engine.connect() as conn:
            row = conn.execute(stmt).first()
        if row is None:
            return None
        return decoded(response_id, owner, _ts(row.created_at), _ts(row.expires_at), row.status, row.response,
                       row.input_items)

    def _update_sync(self, owner: str, response_id: str, status: Status, response: Optional[bytes],
                     expect: Optional[frozenset[str]], now: float) -> bool:
        t = RESPONSES.c
        where = (t.response_id == response_id, t.owner == owner, t.expires_at > _utc(now))
        # the row is locked while it is judged: SQLite's BEGIN IMMEDIATE, PostgreSQL's FOR UPDATE
        with self.db.engine.connect().execution_options(sqlite_immediate=True) as conn, conn.begin():
            row = conn.execute(select(t.status, t.input_bytes).where(*where).with_for_update()).first()
            if row is None or (expect is not None and row.status not in expect):
                return False
            values: dict[str, Any] = {"status": status}
            if response is not None:
                self._bounded(response, int(row.input_bytes))
                values["response"] = response.decode("utf-8")
            conn.execute(update(RESPONSES).where(*where).values(**values))
        return True

    def _delete_sync(self, owner: str, response_id: str, now: float) -> bool:
        t = RESPONSES.c
        with self.db.engine.begin() as conn:
            done = conn.execute(delete(RESPONSES).where(t.response_id == response_id, t.owner == owner,
                                                        t.expires_at > _utc(now)))
        return bool(done.rowcount)

    def _sweep_sync(self, now: float) -> int:
        with self.db.engine.begin() as conn:
            done = conn.execute(delete(RESPONSES).where(RESPONSES.c.expires_at <= _utc(now)))
        return int(done.rowcount or 0)

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._schema_lock:
            if not self._schema_ready:
                self.db.migrate(MIGRATIONS)
                self._schema_ready = True

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            self._ensure_schema()
            result = fn(*args)
        except (SQLAlchemyError, OSError) as exc:
            if not self._down:
                self._down = True
                log.warning("stored responses: the database %s failed: %s: %s", self.db.display_url,
                            type(exc).__name__, mask_urls_in(str(exc).splitlines()[0] if str(exc) else ""))
            raise ResponseStoreUnavailableError(
                f"stored responses are unavailable: the database did not answer ({type(exc).__name__})",
                retry_after=RETRY_AFTER_S) from None
        if self._down:
            self._down = False
            log.info("stored responses: the database %s answers again", self.db.display_url)
        return result

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, functools.partial(self._guarded, fn, *args))
        except RuntimeError:  # closed: the server is stopping
            raise ResponseStoreUnavailableError("stored responses are unavailable: the server is stopping",
                                                retry_after=RETRY_AFTER_S) from None
        return await future
