"""Live unimodel servers on tiny checkpoints for ``unimodel eval``'s tests: ``tiny-random`` (text-only: it
answers an image with a 400) and ``tiny-random-vision``, each started once per session on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tests.support.live_server import LiveServer
from unimodel.compose import build_engine
from unimodel.config import Settings
from unimodel.evals.cli import register


def _serve(model: str, cache_dir: Path) -> LiveServer:
    settings = Settings(engine="local", model=model, cache_dir=cache_dir, device="cpu", dtype="float32")
    return LiveServer(settings, build_engine(settings))


@pytest.fixture(scope="session")
def tiny_random_server(tiny_cache_dir: Path) -> Iterator[LiveServer]:
    with _serve("tiny-random", tiny_cache_dir) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_vision_server(tiny_cache_dir: Path) -> Iterator[LiveServer]:
    with _serve("tiny-random-vision", tiny_cache_dir) as server:
        yield server


def eval_cli(*args: str, columns: int = 80) -> tuple[int, str, str]:
    """``unimodel eval ARGS`` through typer's runner, the terminal ``columns`` wide: (exit code, stdout, stderr)."""
    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:  # a second command, so `eval` is a subcommand as in the real CLI
        """Unused."""

    result = CliRunner().invoke(app, ["eval", *args], env={"COLUMNS": str(columns)})
    return result.exit_code, result.stdout, result.stderr
