"""`unimodel plan` as the CLI registers it, for the command's tests."""

from __future__ import annotations

import pytest
import typer

from unimodel.plan.command import register


@pytest.fixture()
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:  # a second command, so `plan` is a subcommand as in the real CLI
        """Unused."""

    return app
