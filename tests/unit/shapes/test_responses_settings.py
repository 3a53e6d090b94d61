"""The Responses API's settings become its state in ``compose.py`` (the store of ``--responses-store``, the sealer
of ``--responses-key-file``), and the app starts and closes that state with the server."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.support.fake_engine import InMemoryEngine
from tests.support.live_server import LiveServer
from tests.support.serve_cli import serve_settings
from unimodel.compose import build_responses, check_workers
from unimodel.engines.base import GenerationRequest
from unimodel.config import Settings
from unimodel.errors import ConfigError
from unimodel.protocol.events import Event, Finish
from unimodel.shapes.responses.sealing import ReasoningSealer
from unimodel.shapes.responses.store import DAY_S, MemoryResponseStore
from unimodel.shapes.responses.store_redis import RedisResponseStore
from unimodel.shapes.responses.store_sql import SqlResponseStore


class QuietEngine(InMemoryEngine):
    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        yield Finish("stop")


def _key_file(path: Path, *lines: str, mode: int = 0o600) -> Path:
    path.write_text("\n".join(["# sealing keys, the current first", *lines, ""]))
    os.chmod(path, mode)
    return path


def test_by_default_responses_live_in_the_request_logs_database(tmp_path: Path) -> None:
    state = build_responses(Settings(data_dir=tmp_path))
    store = state.store
    assert isinstance(store, SqlResponseStore) and store.db.path == (tmp_path / "requests.db").resolve()
    assert store.retention_s == 30 * DAY_S and store.max_bytes == 16 * 1024 * 1024
    assert state.sealer.ephemeral
    pg = build_responses(Settings(log_db="postgresql://u:secret@db.example:5432/log")).store
    assert isinstance(pg, SqlResponseStore) and pg.db.dialect == "postgresql" and "secret" not in pg.display_url
    assert not (tmp_path / "requests.db").exists()  # nothing is connected or made while composing


def test_the_other_stores(tmp_path: Path) -> None:
    memory = build_responses(Settings(responses_store="memory", responses_memory_records=5,
                                      responses_retention_days=1, responses_max_bytes=2048)).store
    assert isinstance(memory, MemoryResponseStore) and memory.max_records == 5
    assert (memory.retention_s, memory.max_bytes) == (DAY_S, 2048)
    redis = build_responses(Settings(responses_store="redis", redis="redis://127.0.0.1:1/0",
                                     redis_prefix="um:")).store
    assert isinstance(redis, RedisResponseStore) and redis.prefix == "um:resp:"
    assert build_responses(Settings(responses_store="off")).store is None
    with pytest.raises(ConfigError, match="--responses-store redis .* --redis"):
        build_responses(Settings(responses_store="redis"))


def test_the_sealing_keys_come_from_a_file(tmp_path: Path) -> None:
    new, old = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    path = _key_file(tmp_path / "keys", new, old)
    sealer = build_responses(Settings(responses_key_file=path, data_dir=tmp_path)).sealer
    assert not sealer.ephemeral and sealer.key_ids == ReasoningSealer([new, old]).key_ids
    with pytest.raises(ConfigError, match="at least 32"):
        build_responses(Settings(responses_key_file=_key_file(tmp_path / "short", "short"), data_dir=tmp_path))
    with pytest.raises(ConfigError, match="every user may read it"):
        build_responses(Settings(responses_key_file=_key_file(tmp_path / "open", new, mode=0o644),
                                 data_dir=tmp_path))


def test_the_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = serve_settings(monkeypatch, "--responses-store", "memory", "--responses-retention-days", "7",
                              "--responses-max-bytes", "65536", "--responses-key-file", str(tmp_path / "k"))
    assert (settings.responses_store, settings.responses_retention_days) == ("memory", 7.0)
    assert settings.responses_max_bytes == 65536 and settings.responses_key_file == tmp_path / "k"


def test_workers_do_not_share_an_in_memory_store() -> None:
    base: dict[str, Any] = {"engine": "upstream", "upstream": "http://127.0.0.1:9/v1", "workers": 2,
                            "redis": "redis://127.0.0.1:6379/0"}
    check_workers(Settings(**base))
    with pytest.raises(ConfigError, match="--responses-store memory"):
        check_workers(Settings(**base, responses_store="memory"))


def test_the_app_starts_and_closes_the_store(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    with LiveServer(settings, QuietEngine()) as server:
        state = server.app.state.responses
        store = state.store
        assert isinstance(store, SqlResponseStore)

        async def round_trip() -> Any:
            await store.put("anonymous", store.record("anonymous", {"id": "resp_1", "status": "completed"}, []))
            return await store.get("anonymous", "resp_1")

        got = server.run(round_trip())
        assert got is not None and got.response == {"id": "resp_1", "status": "completed"}
        assert store._sweeping is not None  # the sweeper runs while the server does
    assert store._sweeping is None and store._executor._shutdown  # closed with the server
    assert (tmp_path / "requests.db").exists()


def test_the_bound_on_background_responses_reaches_the_state(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_responses(Settings(data_dir=tmp_path)).background.max_in_flight == 64
    settings = serve_settings(monkeypatch, "--responses-max-background", "3", "--data-dir", str(tmp_path))
    assert build_responses(settings).background.max_in_flight == 3
