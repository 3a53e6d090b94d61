"""Run `unimodel plan` in process (typer's CliRunner) on a wide, offline terminal."""

from __future__ import annotations

import typer
from typer.testing import CliRunner


def run_plan(app: typer.Typer, *args: str, columns: int = 400) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of ``plan ARGS`` (no hub access: HF_HUB_OFFLINE)."""
    result = CliRunner().invoke(app, ["plan", *args], env={"COLUMNS": str(columns), "HF_HUB_OFFLINE": "1"})
    return result.exit_code, result.stdout, result.stderr
