"""PyTorch's CPU threads: the cores less one by default (the event loop keeps a core), or what was asked."""

from __future__ import annotations

import pytest
import torch

from unimodel.engines.local.cpu_threads import apply_cpu_threads, default_cpu_threads, usable_cores
from unimodel.engines.local.engine import LocalEngine


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 1), (4, 3), (64, 63)])
def test_the_default_leaves_the_event_loop_a_core(cores: int, threads: int) -> None:
    assert default_cpu_threads(cores) == threads


def test_applying_sets_torch_and_a_bad_count_is_refused() -> None:
    before = torch.get_num_threads()
    try:
        assert apply_cpu_threads(1) == 1 and torch.get_num_threads() == 1
        assert apply_cpu_threads(None) == default_cpu_threads(usable_cores()) == torch.get_num_threads()
        with pytest.raises(ValueError):
            apply_cpu_threads(0)
    finally:
        torch.set_num_threads(before)


def test_the_engine_on_cpu_sets_them_when_it_starts(engine: LocalEngine) -> None:
    assert engine.device in ("auto", "cpu") and engine.cpu_threads is None
    assert torch.get_num_threads() == default_cpu_threads(usable_cores())
