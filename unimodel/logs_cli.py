"""``unimodel logs`` and ``unimodel logs stats``: parse flags, query the request log, print. Nothing else.

``unimodel logs [--db URL] [--since 1h] [--route R] [--key NAME] [--limit N] [--wide] [--json]`` prints the
newest rows as a rich table that fits the terminal's width (``--wide``: every column whole), or one JSON object
per line (for ``jq``). ``unimodel logs stats`` prints requests, errors by type, tokens by effort, p50/p95
latency and TTFT, and a cost estimate only for hardware the operator named (``--gpu``/``--gpus`` at the plan's
prices, ``--price-per-gpu-hour``, or ``--price-per-hour`` for the whole machine). The database is ``--db``,
else the server's ``--log-db``/``UNIMODEL_LOG_DB``/``--config``, else ``requests.db`` in the data dir. Errors end with one line on stderr: exit 2 for bad input, 1 when the log
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
from unimodel.telemetry.listing import rows_view
from unimodel.telemetry.stats import COST_HINT, STATS_COLUMNS, Pricing, compute_stats
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
    wide: bool = typer.Option(False, "--wide", help="Every column and whole values (full request ids); one "
                                                    "block per request when the table is wider than the terminal."),
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
    if not rows:
        typer.echo("no requests match" if since or route or key else "no requests in the log yet")
        return
    console = Console()
    console.print(rows_view(rows, width=console.width, wide=wide,
                            title=f"{len(rows)} requests, newest first, times in UTC"))


@logs_app.command()
def stats(
    db: Optional[str] = _DB,
    since: Optional[str] = _SINCE,
    route: Optional[str] = _ROUTE,
    key: Optional[str] = _KEY,
    gpu: Optional[str] = typer.Option(None, help="The GPU serving the model, for a cost estimate at the plan's "
                                                 "catalog price (default: no cost estimate)."),
    gpus: Optional[int] = typer.Option(None, min=1, help="How many GPUs (default: 1)."),
    price_per_gpu_hour: Optional[float] = typer.Option(None, min=0, help="USD per GPU-hour (default: the "
                                                                         "catalog's price for --gpu)."),
    price_per_hour: Optional[float] = typer.Option(None, min=0, help="USD per hour for the whole machine (a CPU "
                                                                     "box, a VM), instead of GPUs."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
    config: Optional[Path] = _CONFIG,
    data_dir: Optional[Path] = _DATA_DIR,
) -> None:
    """Requests, errors by type, tokens by effort, p50/p95 latency and TTFT, and a cost estimate when the
    hardware or its price is given."""
    pricing = _pricing(gpu, gpus, price_per_gpu_hour, price_per_hour)
    when = parse_since(since)
    rows = _query(_open_store(db, config, data_dir), since=when, route=route, key=key, columns=STATS_COLUMNS)
    result = compute_stats(rows, pricing)
    if as_json:
        typer.echo(json_text(json.dumps(result.to_dict(), ensure_ascii=False)))
        return
    console = Console()
    console.print(result)
    if pricing is None:
        console.print(COST_HINT, markup=False, highlight=False)


def _pricing(gpu: Optional[str], gpus: Optional[int], price_per_gpu_hour: Optional[float],
             price_per_hour: Optional[float]) -> Optional[Pricing]:
    """The hardware the flags name; ``None`` when they name none (then no cost is printed: a default GPU's
    price for a server that may run on a CPU would be made up)."""
    from unimodel.plan.catalog import find_gpu

    if price_per_hour is not None:
        if gpu is not None or gpus is not None or price_per_gpu_hour is not None:
            _fail("--price-per-hour prices the whole machine: give it alone, or --gpu/--gpus/--price-per-gpu-hour")
        return Pricing(price_per_hour)
    if gpu is None:
        if price_per_gpu_hour is not None:
            return Pricing.per_gpu(None, gpus or 1, price_per_gpu_hour)
        if gpus is not None:
            _fail("--gpus needs --gpu KIND (the plan's catalog price) or --price-per-gpu-hour USD")
        return None
    try:
        card = find_gpu(gpu)
    except ValueError as exc:
        _fail(str(exc))
    price = card.price_per_hour if price_per_gpu_hour is None else price_per_gpu_hour
    return Pricing.per_gpu(card.key, gpus or 1, price)
