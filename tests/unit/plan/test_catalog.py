"""The GPU catalog, nvidia-smi names, and GPU detection (with a stand-in nvidia-smi on PATH)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from unimodel.plan.catalog import CATALOG, find_gpu, gpu_from_nvidia_name
from unimodel.plan.planner import detect_gpus, plan_for_this_machine


def test_catalog_entries() -> None:
    h100, h200, b200, a100 = (find_gpu(k) for k in ("h100", "h200", "b200", "a100-80g"))
    assert h100.memory_bytes == 81_559 * 2**20  # nvidia-smi's MiB: 85.5e9 bytes, not 80e9
    assert h200.memory_bytes == 143_771 * 2**20
    assert (h100.fp8, h100.fp4, h100.hopper) == (True, False, True)
    assert (b200.fp8, b200.fp4, b200.hopper) == (True, True, False)
    assert (a100.fp8, a100.fp4) == (False, False)
    assert find_gpu("L40S").fp8 and not find_gpu("rtx-4090").fp4 and find_gpu("5090").fp4
    assert all(g.price_per_hour > 0 and g.bandwidth_tbs > 0 for g in CATALOG.values())
    assert find_gpu("H100_SXM") is h100 and find_gpu("a100") is a100


def test_unknown_gpu() -> None:
    with pytest.raises(ValueError, match="unknown GPU 'tpu-v5'; known: h100"):
        find_gpu("tpu-v5")


@pytest.mark.parametrize("name,mib,key", [
    ("NVIDIA H100 80GB HBM3", 81559, "h100"),
    ("NVIDIA H100 PCIe", 81559, "h100-pcie"),
    ("NVIDIA H100 NVL", 95830, "h100-nvl"),
    ("NVIDIA H200", 143771, "h200"),
    ("NVIDIA B200", 183359, "b200"),
    ("NVIDIA A100-SXM4-80GB", 81920, "a100-80g"),
    ("NVIDIA A100-SXM4-40GB", 40960, "a100-40g"),
    ("NVIDIA A100-PCIE-40GB", None, "a100-40g"),
    ("NVIDIA L40S", 46068, "l40s"),
    ("NVIDIA GeForce RTX 4090", 24564, "rtx-4090"),
    ("NVIDIA RTX PRO 6000 Blackwell Server Edition", 97887, "rtx-pro-6000"),
])
def test_nvidia_smi_names(name: str, mib: int | None, key: str) -> None:
    card = gpu_from_nvidia_name(name, mib)
    assert card is not None and card.key == key


def _fake_nvidia_smi(bin_dir: Path, output: str, code: int = 0) -> None:
    script = bin_dir / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}EOF\nexit {code}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_detect_gpus_asks_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    _fake_nvidia_smi(tmp_path, "NVIDIA H200, 143771 MiB\nNVIDIA H200, 143771 MiB\n")
    found = detect_gpus()
    assert found is not None and (found[0].key, found[1]) == ("h200", 2)
    plan = plan_for_this_machine(max_model_len=262_144)
    assert plan is not None and plan.sizing.gpus == 2 and plan.sizing.fits


@pytest.mark.parametrize("output,code", [("Tesla K80, 11441 MiB\n", 0), ("", 0), ("", 9)])
def test_detect_gpus_none_for_unknown_cards_and_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         output: str, code: int) -> None:
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    _fake_nvidia_smi(tmp_path, output, code)
    assert detect_gpus() is None


def test_detect_gpus_without_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no nvidia-smi anywhere
    assert detect_gpus() is None and plan_for_this_machine() is None
