"""``unimodel logs`` and ``unimodel logs stats``: parse flags, query the request log, print. Nothing else.

``unimodel logs [--db URL] [--since 1h] [--route R] [--key NAME] [--limit N] [--json]`` prints the newest
rows as a rich table, or one JSON object per line (for ``jq``). ``unimodel logs stats`` prints requests,
errors by type, tokens by effort, p50/p95 latency and TTFT, and a cost estimate (``--gpu``/``--gpus``, the
plan's prices). The database is ``--db``, else the server's ``--log-db``/``UNIMODEL_LOG_DB``/``--config``,
else ``requests.db`` in the data dir. Errors end with one line on stderr: exit 2 for bad input, 1 when the log
cannot be read.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from rich.console import Console
from sqlalchemy.exc import SQLAlchemyError

from unimodel.printable import json_text, mask_urls_in, printable
from unimodel.telemetry.listing import rows_table
from unimodel.telemetry.stats import STATS_COLUMNS, compute_stats
from unimodel.telemetry.store import LogStore, LogStoreError, database_url, default_data_dir

ERROR_PREFIX = "unimodel: error: "
_SPAN = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

logs_app = typer.Typer(name="logs", help="The request log: recent requests, or their statistics.",
                       invoke_without_command=True, add_completion=False)


def register(app: typer.Typer) -> None:
    app.add_typer(logs_app, name="logs")


def _fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr: URL credentials masked, control characters escaped (a database error may quote
    what the server stored)."""
    typer.echo(ERROR_PREFIX + printable(mask_urls_in(" ".join(message.split()))), err=True)
    raise typer.Exit(code)


def parse_since(value: Optional[str], now: Optional[datetime] = None) -> Optional[datetime]:
    """``30s``, ``15m``, ``1h``, ``2d``, ``1w`` ago, or an ISO 8601 time (UTC unless it says otherwise)."""
    if value is None:
        return None
    now = now or datetime.now(timezone.utc)
    match = _SPAN.match(value.strip().lower())
    if match:
        try:  # a huge span overflows timedelta itself, or the subtraction (before the year 1)
            return now - timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})
        except (OverflowError, ValueError):
            _fail(f"--since {value.strip()[:40]!r} reaches back too far: give a span such as 30m, 1h, 2d or an "
                  "ISO 8601 time")
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        _fail(f"--since takes a span such as 30m, 1h, 2d or an ISO 8601 time, not {value!r}")
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _open_store(db: Optional[str], config: Optional[Path], data_dir: Optional[Path]) -> LogStore:
    from unimodel.config import ConfigError, Settings  # the CLI layer: settings give the server's own database

    try:
        settings = Settings.load(config, log_db=db, data_dir=data_dir)
    except ConfigError as exc:
        _fail(str(exc))
    try:
        store = LogStore(database_url(settings.log_db, default_data_dir(settings.data_dir)))
    except LogStoreError as exc:
        _fail(str(exc))
    if store.path is not None and not store.path.exists():
        _fail(f"there is no request log at {store.path} (a server writes it; or give --db)", 1)
    return store


def _query(store: LogStore, **kwargs: Any) -> list[dict[str, Any]]:
    try:
        return store.rows(**kwargs)
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None) or exc
        _fail(f"cannot read the request log at {store.display_url}: {str(orig).splitlines()[0]}", 1)
    finally:
        store.dispose()


_DB = typer.Option(None, "--db", help="Database URL or SQLite file (default: the server's --log-db).")
_SINCE = typer.Option(None, help="Only requests since: 30m, 1h, 2d, or an ISO 8601 time.")
_ROUTE = typer.Option(None, help="Only this route.")
_KEY = typer.Option(None, help="Only this key name.")
_CONFIG = typer.Option(None, "--config", help="The server's YAML settings (for its --log-db and data dir).")
_DATA_DIR = typer.Option(None, help="The server's data dir (default: UNIMODEL_DATA_DIR or ~/.local/share/unimodel).")


@logs_app.callback(invoke_without_command=True)
def logs(
    ctx: typer.Context,
    db: Optional[str] = _DB,
    since: Optional[str] = _SINCE,
    route: Optional[str] = _ROUTE,
    key: Optional[str] = _KEY,
    limit: int = typer.Option(50, min=1, help="Most rows to print, newest first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line, every column."),
    config: Optional[Path] = _CONFIG,
    data_dir: Optional[Path] = _DATA_DIR,
) -> None:
    """Recent requests from the request log, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    when = parse_since(since)
    rows = _query(_open_store(db, config, data_dir), since=when, route=route, key=key, limit=limit)
    if as_json:
        for row in rows:
            typer.echo(json_text(json.dumps(row, ensure_ascii=False, default=str)))
        return
    Console().print(rows_table(rows, title=f"{len(rows)} requests, newest first"))


@logs_app.command()
def stats(
    db: Optional[str] = _DB,
    since: Optional[str] = _SINCE,
    route: Optional[str] = _ROUTE,
    key: Optional[str] = _KEY,
    gpu: str = typer.Option("h200", help="The GPU serving the model, for the cost estimate (the plan's catalog)."),
    gpus: int = typer.Option(2, min=1, help="How many of them."),
    price_per_gpu_hour: Optional[float] = typer.Option(None, min=0, help="USD per GPU-hour (default: the "
                                                                         "catalog's)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
    config: Optional[Path] = _CONFIG,
    data_dir: Optional[Path] = _DATA_DIR,
) -> None:
    """Requests, errors by type, tokens by effort, p50/p95 latency and TTFT, and a cost estimate."""
    from unimodel.plan.catalog import find_gpu

    try:
        card = find_gpu(gpu)
    except ValueError as exc:
        _fail(str(exc))
    when = parse_since(since)
    rows = _query(_open_store(db, config, data_dir), since=when, route=route, key=key, columns=STATS_COLUMNS)
    result = compute_stats(rows, card, gpus, price_per_gpu_hour)
    if as_json:
        typer.echo(json_text(json.dumps(result.to_dict(), ensure_ascii=False)))
        return
    Console().print(result)
