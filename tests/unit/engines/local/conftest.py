"""Fixtures for the embedded engine: tiny-random built once per session, one started engine per session.

``build_tiny_checkpoints`` and ``start_engine`` are plain functions so the lead can move them to
``tests/conftest.py`` unchanged. The engine is not bound to an event loop, so a session-wide engine serves
every test's own loop; it is started and closed with ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from unimodel.engines.local import LocalEngine
from unimodel.models import ensure_tiny_random


def build_tiny_checkpoints(cache_dir: Path, *, vision: bool = False) -> Path:
    """Build (or reuse) tiny-random, and tiny-random-vision when asked, under ``cache_dir``."""
    path = ensure_tiny_random("tiny-random", cache_dir)
    if vision:
        ensure_tiny_random("tiny-random-vision", cache_dir)
    return path


def start_engine(model: str, cache_dir: Path, **kwargs: Any) -> LocalEngine:
    engine = LocalEngine(model, cache_dir=cache_dir, dtype="float32", device="cpu", **kwargs)
    asyncio.run(engine.start())
    return engine


@pytest.fixture(scope="session")
def tiny_path(tiny_cache_dir: Path) -> Path:
    return ensure_tiny_random("tiny-random", tiny_cache_dir)


@pytest.fixture(scope="session")
def engine(tiny_cache_dir: Path) -> Iterator[LocalEngine]:
    eng = start_engine("tiny-random", tiny_cache_dir, max_num_seqs=8, max_queue=32)
    yield eng
    asyncio.run(eng.aclose())
