"""The ``unimodel`` command: parse flags, build settings, call the library, print. Nothing else."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from typer.exceptions import TyperException

from unimodel.config import ConfigError, Settings
from unimodel.printable import mask_urls_in, printable
from unimodel.server.run import StartFailed, run_server
from unimodel.server.workers import run_workers
from unimodel.serve_help import SettingsHelpCommand
from unimodel.settings_flags import settings_options

app = typer.Typer(
    name="unimodel",
    help="One unified model (chat, reasoning, vision, code) behind one OpenAI-compatible endpoint.",
    invoke_without_command=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(ctx: typer.Context) -> None:
    """One unified model (chat, reasoning, vision, code) behind one OpenAI-compatible endpoint."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


@app.command(cls=SettingsHelpCommand)  # its --help: every flag whole at 80 columns (serve_help.py)
@settings_options
def serve(
    config: Optional[Path] = typer.Option(None, "--config", metavar="FILE",
                                          help="YAML settings file (flags and UNIMODEL_* env win)."),
    **flags: Any,
) -> None:
    """Serve the OpenAI-compatible endpoint.

    Every setting is a flag; a structured one takes JSON, e.g. --reasoning '{"default_effort": "high"}'.
    """
    settings = Settings.load(config, **flags)
    if settings.workers > 1:
        run_workers(settings)
    else:
        run_server(settings)


def _register_optional_commands() -> None:
    from unimodel.keys_cli import register as register_keys  # `unimodel keys create|list|revoke`

    register_keys(app)
    from unimodel.logs_cli import register as register_logs  # `unimodel logs`, `unimodel logs stats`

    register_logs(app)
    from unimodel.evals.cli import register as register_eval  # `unimodel eval`: an HTTP client of any endpoint

    register_eval(app)
    from unimodel.bench.cli import register as register_bench  # `unimodel bench`: an HTTP client of any endpoint

    register_bench(app)
    try:
        from unimodel.plan.command import register as register_plan
    except ImportError:
        return
    register_plan(app)


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: usage errors and settings errors become one line on stderr and exit code 2."""
    _register_optional_commands()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # `unimodel bench` and `unimodel eval` are httpx clients (the server itself uses aiohttp): one INFO line per
    # request is noise there, and slow
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        result = app(args=argv, standalone_mode=False)
    except ConfigError as exc:
        _fail(str(exc), 2)
    except StartFailed as exc:
        _fail(f"the engine did not start: {exc}", 1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except TyperException as exc:  # typer's click usage errors: bad flag, bad value, missing option
        code = getattr(exc, "exit_code", 2)
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        _fail(message, code if isinstance(code, int) and code else 2)
    sys.exit(result if isinstance(result, int) else 0)


def _fail(message: str, code: int) -> None:
    """One line on stderr, with any URL's credentials masked (a settings error may quote --log-db)."""
    typer.echo(f"unimodel: error: {printable(mask_urls_in(' '.join(message.split())))}", err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
