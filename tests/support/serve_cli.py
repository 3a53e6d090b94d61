"""``unimodel serve`` run through the real CLI with the server's run replaced by a recorder: the settings the
flags make, without starting anything."""

from __future__ import annotations

import pytest

import unimodel.cli as cli
from unimodel.config import Settings


def serve_settings(monkeypatch: pytest.MonkeyPatch, *args: str) -> Settings:
    seen: list[Settings] = []
    monkeypatch.setattr(cli, "run_server", seen.append)
    cli.app(args=["serve", *args], standalone_mode=False)
    [settings] = seen
    return settings
