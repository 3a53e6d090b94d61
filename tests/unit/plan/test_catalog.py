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
    # CUDA's total (torch.cuda.mem_get_info), which vLLM multiplies by --gpu-memory-utilization; not
    # nvidia-smi's memory.total (81,559 MiB for an H100), which counts what the driver keeps
    assert h100.memory_bytes == int(79.19 * 2**30) and h100.memory_mib == 81_559
    assert h200.memory_bytes == int(139.81 * 2**30) and b200.memory_bytes == int(178.35 * 2**30)
    assert all(g.memory_bytes < g.memory_mib * 2**20 for g in CATALOG.values())
    # vLLM's default --max-num-seqs for `vllm serve`: 1024 from 70 GiB up, except on A100s; else 256
    assert (h100.vllm_default_max_num_seqs, h200.vllm_default_max_num_seqs) == (1024, 1024)
    assert (a100.vllm_default_max_num_seqs, find_gpu("l40s").vllm_default_max_num_seqs) == (256, 256)
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
