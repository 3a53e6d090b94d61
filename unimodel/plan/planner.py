"""Make a plan (the library entry point of ``unimodel plan``), and find the GPUs of this machine."""

from __future__ import annotations

import shutil
import subprocess
from typing import Optional

from unimodel.plan.builtin import FOUR_SERVERS
from unimodel.plan.catalog import GPU, find_gpu, gpu_from_nvidia_name
from unimodel.plan.launch import sglang_command, vllm_command
from unimodel.plan.report import FourServerRow, Plan
from unimodel.plan.sizing import KvCache, Weights, size, smallest_fit
from unimodel.plan.specs import SpecError, load_spec


def make_plan(model: str = "mistral-small-4", gpu: str = "h200", gpus: int = 2, weights: Weights = "fp8",
              kv_cache: KvCache = "auto", max_model_len: Optional[int] = None, utilization: float = 0.9,
              concurrency: Optional[int] = None, price_per_gpu_hour: Optional[float] = None,
              compare_four: bool = False, served_model_name: Optional[str] = None, port: int = 8000) -> Plan:
    """Raises ``ValueError`` (``SpecError`` among them) with one clear line for bad input."""
    if gpus < 1:
        raise ValueError(f"--gpus must be at least 1, not {gpus}")
    if max_model_len is not None and max_model_len < 1:
        raise ValueError(f"--max-model-len must be a positive number of tokens, not {max_model_len}")
    if not 0 < utilization <= 1:
        raise ValueError(f"--gpu-memory-utilization must be in (0, 1], not {utilization}")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"--concurrency must be at least 1, not {concurrency}")
    if price_per_gpu_hour is not None and price_per_gpu_hour < 0:
        raise ValueError("--price-per-gpu-hour cannot be negative")
    card = find_gpu(gpu)
    spec = load_spec(model)
    length = max_model_len or spec.max_context or 32768
    sizing = size(spec, card, gpus, weights, kv_cache, length, utilization, concurrency, price_per_gpu_hour)
    four: list[FourServerRow] = []
    if compare_four:
        for role, name in FOUR_SERVERS:
            other = load_spec(name)
            four.append(FourServerRow(role, name, smallest_fit(
                other, card, weights, kv_cache, min(length, other.max_context or length), utilization,
                price_per_gpu_hour)))
    return Plan(model=model, spec=spec, sizing=sizing,
                vllm=vllm_command(spec, sizing, model, served_model_name=served_model_name, port=port),
                sglang=sglang_command(spec, sizing, model, served_model_name=served_model_name),
                four=four)


def detect_gpus() -> Optional[tuple[GPU, int]]:
    """The catalog GPU and count that ``nvidia-smi`` reports, or None (no GPU, or one not in the catalog)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in out.splitlines() if line.strip()]
    card = gpu_from_nvidia_name(names[0]) if names else None
    return (card, len(names)) if card else None


__all__ = ["SpecError", "detect_gpus", "make_plan"]
