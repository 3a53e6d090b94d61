"""Engines under contract: each fixture param is a live unimodel server and the model name it serves."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.live_server import LiveServer
from tests.support.scripted_upstream import ScriptedUpstream
from unimodel.config import Settings
from unimodel.compose import build_engine

#: "vllm" is real vLLM (tiny-scripted, Mistral parsers on) behind the upstream engine; it needs the vLLM venv
ENGINES = ["upstream", "local", pytest.param("vllm", marks=[pytest.mark.vllm, pytest.mark.slow])]


@dataclass
class Served:
    kind: str
    base_url: str
    model: str
    server: LiveServer  # its engine is server.engine, to be driven on server.run


@pytest.fixture(scope="session", params=ENGINES)
def served(request: pytest.FixtureRequest, scripted_upstream: ScriptedUpstream,
           tiny_cache_dir: Path) -> Iterator[Served]:
    if request.param == "vllm":
        from tests.support.vllm_server import SERVED_NAME

        vllm = request.getfixturevalue("vllm_servers").parsed
        settings = Settings(engine="upstream", upstream=vllm.base_url)
        with LiveServer(settings, build_engine(settings)) as server:
            yield Served("vllm", server.base_url, SERVED_NAME, server)
    elif request.param == "upstream":
        settings = Settings(engine="upstream", upstream=scripted_upstream.base_url)
        with LiveServer(settings, build_engine(settings)) as server:
            yield Served("upstream", server.base_url, "raw-think", server)
    else:
        settings = Settings(engine="local", model="tiny-random", cache_dir=tiny_cache_dir, device="cpu",
                            dtype="float32", max_num_seqs=8)
        with LiveServer(settings, build_engine(settings)) as server:
            yield Served("local", server.base_url, "tiny-random", server)
