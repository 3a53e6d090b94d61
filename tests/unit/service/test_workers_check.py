"""Which ``--workers N`` settings are served and which are refused (state that would not be shared)."""

from __future__ import annotations

import pytest

from unimodel.config import ConfigError, Settings
from unimodel.server.workers import check_workers

UPSTREAM = {"engine": "upstream", "upstream": "http://127.0.0.1:9/v1"}


@pytest.mark.parametrize("extra", [
    {"workers": 1, "rpm": 10},  # one process: in memory is fine
    {"workers": 4, "idempotency": False},  # nothing to share
    {"workers": 4, "rpm": 10, "redis": "redis://127.0.0.1:6379/0"},
])
def test_served(extra: dict[str, object]) -> None:
    check_workers(Settings(**UPSTREAM, **extra))


@pytest.mark.parametrize(("extra", "named"), [
    ({"workers": 2}, "idempotency keys"),  # on by default
    ({"workers": 2, "idempotency": False, "max_concurrent": 4}, "rate limits"),
    ({"workers": 2, "tpm": 1000}, "rate limits and idempotency keys"),
])
def test_in_memory_state_is_refused_with_one_line_naming_it(extra: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=f"--workers 2 needs shared state: {named} would") as err:
        check_workers(Settings(**UPSTREAM, **extra))
    assert "--redis" in str(err.value) and "\n" not in str(err.value)


def test_an_engine_that_loads_a_model_is_refused() -> None:
    with pytest.raises(ConfigError, match="--engine local each would load its own model"):
        check_workers(Settings(engine="local", workers=2, redis="redis://127.0.0.1:6379/0"))
