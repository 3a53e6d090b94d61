"""Engines under contract: each fixture param is a live unimodel server and the model name it serves."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.live_server import LiveServer
from tests.support.scripted_upstream import ScriptedUpstream
from unimodel.config import Settings
from unimodel.engines.factory import build_engine

ENGINES = ["upstream"]


@dataclass
class Served:
    kind: str
    base_url: str
    model: str


@pytest.fixture(scope="session", params=ENGINES)
def served(request: pytest.FixtureRequest, scripted_upstream: ScriptedUpstream) -> Iterator[Served]:
    if request.param == "upstream":
        settings = Settings(engine="upstream", upstream=scripted_upstream.base_url)
        with LiveServer(settings, build_engine(settings)) as server:
            yield Served("upstream", server.base_url, "raw-think")
