"""``unimodel eval``'s bad input: one line on stderr, exit code 2, before any request."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from unimodel.evals.cli import register


@pytest.fixture()
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:  # a second command, so `eval` is a subcommand as in the real CLI
        """Unused."""

    return app


ENDPOINT = ["--url", "http://127.0.0.1:9/v1"]  # port 9 (discard): nothing listens, nothing is sent


@pytest.mark.parametrize("args, message", [
    (["--url", "ftp://x", "--model", "m"], "--url must be an http(s) URL"),
    ([*ENDPOINT, "--model", "m", "--suite", "math,maths"], "unknown suite 'maths'"),
    ([*ENDPOINT, "--model", "m", "--suite", "math,math"], "--suite names one twice"),
    ([*ENDPOINT, "--model", "m", "--reasoning-effort", "none,hgih"], "unknown reasoning effort hgih"),
    ([*ENDPOINT, "--model", "m", "--reasoning-effort", "none,high", "--compare", "none,low"], "--compare names low"),
    ([*ENDPOINT, "--model", "m", "--compare", "high"], "--compare takes two different efforts"),
    (ENDPOINT, "could not list the endpoint's models"),  # no --model: it asks the endpoint, which is not there
])
def test_bad_input_is_one_line_and_exit_2(app: typer.Typer, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["eval", *args], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("unimodel: error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1
