"""The request log's database: SQLite (WAL) by default, PostgreSQL with ``--log-db postgresql://…``.

SQLAlchemy 2 Core, one engine per store. Every call here does blocking I/O: the server calls it only from the
log writer's thread (``writer.py``) or through ``asyncio.to_thread``; the CLI calls it directly. Every wait is
bounded (connect timeout, statement timeout, SQLite busy timeout), so a database that is down or stuck makes
a call fail within seconds instead of hanging the writer. Parameters are hidden from SQLAlchemy's error
messages, so a failure logged by the writer never carries a row's values.

Rows cross this boundary as plain dicts keyed by :data:`~unimodel.telemetry.schema.COLUMNS`, with
``created_at`` as an ISO 8601 UTC string (the same form as in the spill file), already redacted and hashed.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.sql.compiler import SQLCompiler

from unimodel.printable import mask_url, mask_urls_in
from unimodel.telemetry.schema import COLUMNS, HAS_TEXT, MIGRATIONS, REQUESTS, Migration

DB_FILE = "requests.db"
_MIGRATION_LOCK = 0x756E696D  # "unim": the PostgreSQL advisory lock held while migrating


class LogStoreError(ValueError):
    """A ``--log-db`` value that is not a database URL we can use."""


class MalformedRowError(ValueError):
    """A row that cannot become the insert's parameters (no ``created_at``, or one that is not an ISO 8601
    time, a value of the wrong type): refused like a row the database refuses for its data."""


def default_data_dir(override: Optional[Path] = None) -> Path:
    """Where the request log lives by default: ``override`` (``--data-dir``/``UNIMODEL_DATA_DIR``), else the
    platform's user data dir (``~/.local/share/unimodel`` on Linux, via platformdirs)."""
    if override is not None:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("unimodel", appauthor=False))


def database_url(value: Optional[str], data_dir: Path) -> str:
    """A SQLAlchemy URL from ``--log-db``: ``postgresql://…`` (driven by psycopg 3), ``sqlite:///path``, or a
    plain file path; ``None`` is ``requests.db`` in ``data_dir``."""
    if value is None:
        return f"sqlite:///{(data_dir / DB_FILE).resolve()}"
    if "://" not in value:
        return f"sqlite:///{Path(value).expanduser().resolve()}"
    for scheme in ("postgresql://", "postgres://"):
        if value.startswith(scheme):
            return "postgresql+psycopg://" + value[len(scheme):]
    if value.startswith(("postgresql+psycopg://", "sqlite:///")):
        return value
    raise LogStoreError("--log-db must be a postgresql:// URL, a sqlite:/// URL or a file path, not "
                        f"{mask_url(value)!r}")


def sqlite_path(url: str) -> Optional[Path]:
    """The database file of a ``sqlite:///`` URL (``None`` for another database or an in-memory one)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


def _naive_utc(value: datetime) -> datetime:
    """A naive UTC datetime (the column's form on both databases); a naive input is taken as UTC."""
    if value.tzinfo is None:
        return value
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def _utc(value: str) -> datetime:
    return _naive_utc(datetime.fromisoformat(value))


def _migrations_table(metadata: MetaData) -> Table:
    return Table("_migrations", metadata, Column("name", String(128), primary_key=True),
                 Column("applied_at", String(32), nullable=False))


class LogStore:
    """One request-log database: migrations, batched inserts (each row at most once), queries."""

    def __init__(self, url: str, *, connect_timeout_s: float = 3.0, statement_timeout_s: float = 10.0) -> None:
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
            raise LogStoreError(f"--log-db is not a database URL: {mask_urls_in(str(exc))}") from exc
        self.url = url
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise LogStoreError(f"the request log supports SQLite and PostgreSQL, not {self.dialect}")
        self.path = sqlite_path(url)
        if self.dialect == "sqlite":
            self.engine = create_engine(url, hide_parameters=True,
                                        connect_args={"timeout": statement_timeout_s, "check_same_thread": False})
            _sqlite_transactions(self.engine)
            if self.path is not None:
                _sqlite_private_files(self.engine, self.path)
        else:
            options = f"-c statement_timeout={int(statement_timeout_s * 1000)}"
            self.engine = create_engine(url, hide_parameters=True, pool_pre_ping=True, pool_size=2,
                                        max_overflow=2, pool_timeout=connect_timeout_s,
                                        connect_args={"connect_timeout": max(1, round(connect_timeout_s)),
                                                      "options": options})
        self._insert = _PreparedInsert(self.engine.dialect)

    @property
    def display_url(self) -> str:
        """The URL without its password (for log lines and the CLI)."""
        return mask_url(self.url)

    # ---- schema ---------------------------------------------------------------------------------------

    def migrate(self, migrations: Sequence[Migration] = MIGRATIONS) -> list[str]:
        """Apply the steps not yet recorded in ``_migrations``, in order, in one transaction (PostgreSQL: under an
        advisory lock; SQLite: ``BEGIN IMMEDIATE``), so replicas starting together migrate once. Returns the
        names applied now."""
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        meta = MetaData()
        table = _migrations_table(meta)
        applied: list[str] = []
        with self.engine.connect().execution_options(sqlite_immediate=True) as conn, conn.begin():
            if self.dialect == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            table.create(conn, checkfirst=True)
            done = set(conn.execute(select(table.c.name)).scalars())
            for migration in migrations:
                if migration.name in done:
                    continue
                migration.apply(conn)
                conn.execute(table.insert().values(name=migration.name,
                                                   applied_at=datetime.now(timezone.utc).isoformat()))
                applied.append(migration.name)
        return applied

    def applied_migrations(self) -> list[str]:
        table = _migrations_table(MetaData())
        with self.engine.connect() as conn:
            return list(conn.execute(select(table.c.name).order_by(table.c.name)).scalars())

    # ---- writing --------------------------------------------------------------------------------------

    def insert(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert ``rows`` in one transaction; a row whose ``log_id`` is already stored is skipped (a replay of
        a batch that was written but not acknowledged inserts nothing twice). Raises
        :class:`MalformedRowError` for a row that cannot be made into parameters (nothing is written then)."""
        if not rows:
            return
        try:
            params = self._insert.params(rows)
        except (KeyError, ValueError, TypeError) as exc:  # e.g. a hand-edited or truncated spill file's row
            raise MalformedRowError(f"a row is malformed: {type(exc).__name__}: {exc}") from exc
        with self.engine.begin() as conn:
            conn.exec_driver_sql(self._insert.sql, params)

    def clear_prompts(self, before: datetime) -> int:
        """Empty ``prompt``/``answer`` of rows that arrived before ``before``; the number of rows changed. It
        reads only rows that still hold text (a partial index holds just those)."""
        stmt = (update(REQUESTS)
                .where(REQUESTS.c.created_at < _naive_utc(before))
                .where(HAS_TEXT)
                .values(prompt=None, answer=None))
        with self.engine.begin() as conn:
            return int(conn.execute(stmt).rowcount or 0)

    # ---- reading --------------------------------------------------------------------------------------

    def rows(self, *, since: Optional[datetime] = None, route: Optional[str] = None, key: Optional[str] = None,
             limit: Optional[int] = None, columns: Optional[Sequence[str]] = None,
             newest_first: bool = True) -> list[dict[str, Any]]:
        """Rows matching the filters, newest first, ``created_at`` as an ISO 8601 UTC string."""
        cols = [REQUESTS.c[name] for name in (columns or ("id", *COLUMNS))]
        stmt = select(*cols)
        if since is not None:
            stmt = stmt.where(REQUESTS.c.created_at >= _naive_utc(since))
        if route is not None:
            stmt = stmt.where(REQUESTS.c.route == route)
        if key is not None:
            stmt = stmt.where(REQUESTS.c.key_name == key)
        order = REQUESTS.c.id.desc() if newest_first else REQUESTS.c.id.asc()
        stmt = stmt.order_by(order)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.engine.connect() as conn:
            out = [dict(r._mapping) for r in conn.execute(stmt)]
        for row in out:
            if isinstance(row.get("created_at"), datetime):
                row["created_at"] = row["created_at"].replace(tzinfo=timezone.utc).isoformat()
        return out

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(REQUESTS)).scalar_one())

    def dispose(self) -> None:
        self.engine.dispose()


class _PreparedInsert:
    """The batch insert, compiled once: the SQL of ``INSERT … ON CONFLICT (log_id) DO NOTHING`` for this
    database, built by SQLAlchemy from :data:`REQUESTS` (the schema stays in one place), and each column's bind
    processor (the same functions SQLAlchemy applies: dates as SQLite stores them, booleans, JSON).

    Why not ``conn.execute(stmt, rows)``: per batch SQLAlchemy looks the statement up in its cache and then
    processes every parameter of every row through generic code, about half of the writer thread's time per
    row (``benchmarks/request_log_rows.py``). Here a row becomes its parameters in one pass and the DBAPI's
    ``executemany`` runs the statement, still through the connection (its transaction, and its errors wrapped
    as SQLAlchemy's ``IntegrityError``/``DataError`` with the parameters hidden)."""

    def __init__(self, dialect: Dialect) -> None:
        dialect_insert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
        # inline(): no RETURNING of the new ids, which nothing reads
        stmt = dialect_insert(REQUESTS).inline().on_conflict_do_nothing(index_elements=["log_id"])
        compiled = stmt.compile(dialect=dialect, column_keys=list(COLUMNS))
        assert isinstance(compiled, SQLCompiler)
        self.sql = compiled.string
        self.positional = compiled.positional
        self.names: tuple[str, ...] = tuple(compiled.positiontup or ()) if self.positional else COLUMNS
        if set(self.names) != set(COLUMNS) or len(self.names) != len(COLUMNS):
            raise RuntimeError(f"the compiled insert binds {self.names}, not the columns {COLUMNS}")
        # (position, processor, what it makes of None): most values of a row are None, and JSON's processor
        # serialises None each time (to the JSON null SQLAlchemy has always stored there)
        self.processors: list[tuple[int, Callable[[Any], Any], Any]] = []
        for i, name in enumerate(self.names):
            column_type = REQUESTS.c[name].type
            processor = column_type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self.processors.append((i, processor, processor(None)))
        self.created_at = self.names.index("created_at")

    def params(self, rows: Sequence[Mapping[str, Any]]) -> Union[list[tuple[Any, ...]], list[dict[str, Any]]]:
        """The rows' parameters for ``executemany``: tuples in the statement's order (SQLite's ``?``) or dicts
        (psycopg's ``%(name)s``). ``created_at`` is required (an ISO 8601 string); a missing column is NULL."""
        values = [self._values(row) for row in rows]
        if self.positional:
            return values
        return [dict(zip(self.names, row_values)) for row_values in values]

    def _values(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        values = [row.get(name) for name in self.names]
        values[self.created_at] = _utc(row["created_at"])
        for i, processor, if_none in self.processors:
            value = values[i]
            values[i] = if_none if value is None else processor(value)
        return tuple(values)


def _sqlite_transactions(engine: Engine) -> None:
    """WAL, and real transactions: pysqlite's own BEGIN handling is turned off and SQLAlchemy's ``begin`` emits
    ``BEGIN`` (``BEGIN IMMEDIATE`` for the migration), SQLAlchemy's documented recipe."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("sqlite_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _sqlite_private_files(engine: Engine, path: Path) -> None:
    """Before each connection SQLite opens: :func:`make_private` on the database and its side files."""

    @event.listens_for(engine, "do_connect")
    def _private(_dialect: Any, _record: Any, _cargs: Any, _cparams: Any) -> None:
        make_private(path)  # (returns None: SQLAlchemy then connects as usual)


#: the files SQLite keeps beside a database (WAL mode, and the rollback journal of a write before it)
SIDE_FILES = ("-wal", "-shm", "-journal")


def make_private(path: Path) -> None:
    """Owner-only permissions on a SQLite database and its side files, before SQLite opens them.

    The WAL holds the newest rows (prompts with ``--log-prompts``) until a checkpoint, and SQLite makes
    ``-wal`` and ``-shm`` with the permission bits of the database file (on Unix; it cannot take a umask
    per file): so the database file is made here, empty and ``0600``, when it is missing (SQLite takes an
    empty file as a new database), and group and other bits are taken off it and off side files an older
    version or a crash left. Files of another user are left alone (``chmod`` is theirs to do); a directory
    that does not exist yet is the migration's to make (``0700``).

    An existing database is never opened here: closing any descriptor of a file drops every POSIX lock the
    process holds on it, the locks of its open SQLite connections included (SQLite's "how to corrupt a
    database", 2.2), and another process may then write beside a transaction of ours. Two stores on one
    file in one process (the request log and the stored responses) connect often, so the file is only ever
    created here (``O_EXCL``), never reopened."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600))
    except FileExistsError:
        pass
    except OSError:
        return  # no directory yet, or not ours: SQLite's own error says which when it opens it
    for name in (str(path), *(f"{path}{suffix}" for suffix in SIDE_FILES)):
        try:
            info = os.stat(name)
            if info.st_mode & 0o077 and info.st_uid == os.geteuid():
                os.chmod(name, stat.S_IMODE(info.st_mode) & 0o700)
        except OSError:  # (not there)
            continue
