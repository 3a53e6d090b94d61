"""Shared fixtures: the scripted upstream and a live unimodel server in front of it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.scripted_upstream import Script, ScriptedUpstream

if TYPE_CHECKING:
    from tests.support.postgres_server import PostgresServer
    from tests.support.redis_server import RedisServer
    from tests.support.vllm_server import VllmServers

REASONING = "Let me think. 2 + 2 is 4, and [brackets] are fine."
ANSWER = "The answer is 4. Ünïcödé and emoji 🎉 survive."


def standard_scripts() -> dict[str, Script]:
    weather = ('{"city": "Paris", "unit": "celsius"}')
    time_args = '{"tz": "Europe/Paris", "note": "a } and a \\"quote\\""}'
    return {
        "raw-plain": Script(mode="raw", content=ANSWER),
        "raw-think": Script(mode="raw", reasoning=REASONING, content=ANSWER),
        "raw-tools": Script(mode="raw", reasoning=REASONING,
                            tool_calls=[("get_weather", weather), ("get_time", time_args)]),
        "raw-bad-tool": Script(mode="raw", tool_calls=[("get_weather", '{"city": "Par')]),
        "parsed-think": Script(mode="parsed", reasoning=REASONING, content=ANSWER),
        "parsed-tools": Script(mode="parsed", reasoning=REASONING,
                               tool_calls=[("get_weather", weather), ("get_time", time_args)]),
        "think-tags": Script(mode="think-tags", reasoning=REASONING, content=ANSWER),
        "json-body": Script(mode="raw", reasoning=REASONING, content=ANSWER, ignore_stream=True),
        "fails-400": Script(error_status=400, error_message="This model's maximum context length is 10"),
        "fails-503": Script(error_status=503, error_message="engine overloaded"),
        "slow": Script(content=ANSWER, delay_s=3.0),
        "drops": Script(content=ANSWER * 4, drop_after_frames=5),
        "error-frame": Script(content=ANSWER * 4, error_frame_after=4),
        "long": Script(content="tok " * 400, chunk_chars=4, frame_delay_s=0.01),
    }


@pytest.fixture(scope="session", autouse=True)
def _request_log_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every server a test starts (in process or not) keeps its request log in a temporary data dir, never in
    the real ~/.local/share/unimodel."""
    data_dir = tmp_path_factory.mktemp("unimodel-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNIMODEL_DATA_DIR", str(data_dir))
        yield data_dir


@pytest.fixture(scope="session")
def scripted_upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream(standard_scripts()) as upstream:
        yield upstream


@pytest.fixture(scope="session")
def tiny_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-random and tiny-random-vision, built once per test session into a private cache."""
    from unimodel.models import ensure_tiny_random

    cache = tmp_path_factory.mktemp("unimodel-cache")
    ensure_tiny_random("tiny-random", cache)
    ensure_tiny_random("tiny-random-vision", cache)
    return cache


@pytest.fixture(scope="session")
def redis_server() -> Iterator["RedisServer"]:
    """One real redis-server for the session (tests use distinct key prefixes, or FLUSHDB)."""
    from tests.support.redis_server import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator["PostgresServer"]:
    """One real PostgreSQL for the session; tests make their own database in it (``create_database()``)."""
    from tests.support.postgres_server import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def scripted_checkpoint(tiny_cache_dir: Path) -> Path:
    """tiny-scripted (Mistral's native format, greedy output follows a script the prompt picks)."""
    from unimodel.models import ensure_tiny_random

    return ensure_tiny_random("tiny-scripted", tiny_cache_dir)


@pytest.fixture(scope="session")
def vllm_servers(request: pytest.FixtureRequest, scripted_checkpoint: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator["VllmServers"]:
    """Real vLLM (CPU build) serving tiny-scripted twice, started together once per session: ``parsed`` with
    Mistral's reasoning and tool parsers (the recipe's flags), ``raw`` without (a stock engine)."""
    from tests.support.vllm_server import (
        SERVED_NAME, RunningVllm, VllmServer, VllmServers, mistral_flags, require_vllm)

    if os.environ.get("UNIMODEL_VLLM_PARSED_URL") and os.environ.get("UNIMODEL_VLLM_RAW_URL"):
        # to iterate on the tests: two vLLMs you started yourself as the fixture would (see the README)
        yield VllmServers(parsed=RunningVllm(os.environ["UNIMODEL_VLLM_PARSED_URL"]),  # type: ignore[arg-type]
                          raw=RunningVllm(os.environ["UNIMODEL_VLLM_RAW_URL"]))  # type: ignore[arg-type]
        return
    python = require_vllm()
    logs = tmp_path_factory.mktemp("vllm-logs")
    parsed = VllmServer(python, mistral_flags(scripted_checkpoint, SERVED_NAME, parsers=True), logs / "parsed.log")
    raw = VllmServer(python, mistral_flags(scripted_checkpoint, SERVED_NAME, parsers=False), logs / "raw.log")
    parsed.start()
    raw.start()
    with parsed, raw:
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            print(f"\nvLLM servers ready: parsed in {parsed.startup_s:.0f}s, raw in {raw.startup_s:.0f}s (started "
                  f"together)", flush=True)
        yield VllmServers(parsed=parsed, raw=raw)
