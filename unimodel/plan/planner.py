"""Make a plan (the library entry point of ``unimodel plan`` and of ``serve --engine vllm``), and find this
machine's GPUs. Nothing here runs at import: ``nvidia-smi`` is asked only when ``detect_gpus`` is called.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Optional

from unimodel.plan.builtin import FOUR_SERVERS
from unimodel.plan.catalog import GPU, find_gpu, gpu_from_nvidia_name
from unimodel.plan.launch import CHECKPOINTS, quantization_flag, sglang_argv, vllm_argv
from unimodel.plan.memory import KV_CACHE, WEIGHTS
from unimodel.plan.report import FourServerRow, Plan
from unimodel.plan.sizing import KvCache, Weights, size, smallest_fit
from unimodel.plan.specs import ModelSpec, SpecError, load_spec

#: --max-model-len when none is given: the model's context, at most 256K (Mistral Small 4's config advertises
#: 1M YaRN positions; its card and vLLM's recipe serve 262,144)
DEFAULT_MAX_MODEL_LEN_CAP = 262_144
FALLBACK_MAX_MODEL_LEN = 32_768


def _check(gpus: int, max_model_len: Optional[int], utilization: float, concurrency: Optional[int],
           price_per_gpu_hour: Optional[float], weights: str, kv_cache: str) -> None:
    if gpus < 1:
        raise ValueError(f"--gpus must be at least 1, not {gpus}")
    if max_model_len is not None and max_model_len < 1:
        raise ValueError(f"--max-model-len must be a positive number of tokens, not {max_model_len}")
    if not 0 < utilization <= 1:
        raise ValueError(f"--gpu-memory-utilization must be in (0, 1], not {utilization}")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"--concurrency must be at least 1, not {concurrency}")
    if price_per_gpu_hour is not None and price_per_gpu_hour < 0:
        raise ValueError(f"--price-per-gpu-hour cannot be negative ({price_per_gpu_hour})")
    if weights not in WEIGHTS:
        raise ValueError(f"--weights must be one of {', '.join(WEIGHTS)}, not '{weights}'")
    if kv_cache not in KV_CACHE:
        raise ValueError(f"--kv-cache must be one of {', '.join(KV_CACHE)}, not '{kv_cache}'")


def default_max_model_len(spec: ModelSpec) -> int:
    return min(spec.max_context, DEFAULT_MAX_MODEL_LEN_CAP) if spec.max_context else FALLBACK_MAX_MODEL_LEN


def _checkpoint_notes(model: str, weights: str) -> tuple[str, ...]:
    if model == "mistral-small-4" and weights not in CHECKPOINTS:
        return (f"Mistral publishes Small 4 in FP8 and NVFP4 only: {weights} sizes a converted copy, and the "
                "command names the FP8 checkpoint; point --model at your converted one",)
    if weights in ("nvfp4", "int4") and quantization_flag(model, weights) is None and model != "mistral-small-4":
        return (f"vLLM cannot quantize to {weights} while loading: serve a pre-quantized {weights} checkpoint "
                "of this model (the command names the one given)",)
    return ()


def make_plan(model: str = "mistral-small-4", gpu: str = "h200", gpus: int = 2, weights: Weights = "fp8",
              kv_cache: KvCache = "auto", max_model_len: Optional[int] = None, utilization: float = 0.9,
              concurrency: Optional[int] = None, price_per_gpu_hour: Optional[float] = None,
              compare_four: bool = False, served_model_name: Optional[str] = None, port: int = 8000) -> Plan:
    """Raises ``ValueError`` (``SpecError`` among them) with one clear line for bad input."""
    _check(gpus, max_model_len, utilization, concurrency, price_per_gpu_hour, weights, kv_cache)
    card = find_gpu(gpu)
    spec = load_spec(model)
    length = max_model_len or default_max_model_len(spec)
    sizing = size(spec, card, gpus, weights, kv_cache, length, utilization, concurrency, price_per_gpu_hour)
    four: list[FourServerRow] = []
    if compare_four:
        for role, name in FOUR_SERVERS:
            other = load_spec(name)
            four.append(FourServerRow(role, name, smallest_fit(
                other, card, weights, kv_cache, min(length, other.max_context or length), utilization,
                price_per_gpu_hour)))
    return Plan(model=model, spec=spec, sizing=sizing,
                vllm=vllm_argv(spec, sizing, model, served_model_name=served_model_name, port=port),
                sglang=sglang_argv(spec, sizing, model, served_model_name=served_model_name),
                four=tuple(four), notes=sizing.notes + _checkpoint_notes(model, weights))


def vllm_command(plan: Plan) -> list[str]:
    """The ``vllm serve`` argv of a plan, for the supervisor (a copy: callers may edit it)."""
    return list(plan.vllm)


def detect_gpus() -> Optional[tuple[GPU, int]]:
    """The catalog GPU and how many of it ``nvidia-smi`` reports, or None (no driver, no GPU, not in the catalog).

    Asks ``nvidia-smi --query-gpu=name,memory.total --format=csv,noheader``; with mixed cards, counts those
    like the first one.
    """
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    cards: list[Optional[GPU]] = []
    for line in out.splitlines():
        if line.strip():
            name, _, mem = line.partition(",")
            digits = "".join(ch for ch in mem if ch.isdigit())
            cards.append(gpu_from_nvidia_name(name.strip(), int(digits) if digits else None))
    first = cards[0] if cards else None
    if first is None:
        return None
    return first, sum(1 for c in cards if c == first)


def plan_for_this_machine(model: str = "mistral-small-4", **kwargs: object) -> Optional[Plan]:
    """``make_plan`` for the GPUs ``nvidia-smi`` reports (None without a known GPU); other arguments as there."""
    found = detect_gpus()
    if found is None:
        return None
    return make_plan(model, found[0].key, found[1], **kwargs)  # type: ignore[arg-type]


__all__ = ["DEFAULT_MAX_MODEL_LEN_CAP", "SpecError", "default_max_model_len", "detect_gpus", "make_plan",
           "plan_for_this_machine", "vllm_command"]
