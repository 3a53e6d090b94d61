"""Make a plan (the library entry point of ``unimodel plan`` and of ``serve --engine vllm``), and find this
machine's GPUs. Nothing here runs at import: ``nvidia-smi`` is asked only when ``detect_gpus`` is called.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from typing import Optional

from unimodel.plan.builtin import FOUR_SERVERS
from unimodel.plan.catalog import GPU, find_gpu, gpu_from_nvidia_name
from unimodel.plan.launch import (
    CHECKPOINTS, DEFAULT_SHUTDOWN_TIMEOUT_S, DEFAULT_VLLM_COMMAND, VLLM_DEFAULT_UTILIZATION,
    attention_backend_notes, check_shutdown_timeout, quantization_flag, recipe_for, sglang_argv, vllm_argv,
)
from unimodel.plan.memory import KV_CACHE, RESERVE_BYTES, WEIGHTS
from unimodel.plan.report import FourServerRow, Plan
from unimodel.plan.sizing import KvCache, Sizing, Weights, size, smallest_fit
from unimodel.plan.specs import ModelSpec, SpecError, load_spec

#: --max-model-len when none is given: the model's context, at most 256K (Mistral Small 4's config advertises
#: 1M YaRN positions; its card and vLLM's recipe serve 262,144)
DEFAULT_MAX_MODEL_LEN_CAP = 262_144
FALLBACK_MAX_MODEL_LEN = 32_768
#: the context Mistral serves Small 4 at (its config advertises 1,048,576 positions)
SMALL_4_SERVED_CONTEXT = 262_144


def _check(gpus: int, max_model_len: Optional[int], utilization: Optional[float], concurrency: Optional[int],
           price_per_gpu_hour: Optional[float], weights: str, kv_cache: str, reserve_bytes: Optional[int],
           max_num_seqs: Optional[int]) -> None:
    if gpus < 1:
        raise ValueError(f"--gpus must be at least 1, not {gpus}")
    if max_model_len is not None and max_model_len < 1:
        raise ValueError(f"--max-model-len must be a positive number of tokens, not {max_model_len}")
    if utilization is not None and not 0 < utilization <= 1:
        raise ValueError(f"--gpu-memory-utilization must be in (0, 1], not {utilization}")
    if concurrency is not None and concurrency < 1:
        raise ValueError(f"--concurrency must be at least 1, not {concurrency}")
    if max_num_seqs is not None and max_num_seqs < 1:
        raise ValueError(f"--max-num-seqs must be at least 1, not {max_num_seqs}")
    if reserve_bytes is not None and reserve_bytes < 0:
        raise ValueError(f"--reserve-gb cannot be negative ({reserve_bytes / 1e9:g})")
    if price_per_gpu_hour is not None and price_per_gpu_hour < 0:
        raise ValueError(f"--price-per-gpu-hour cannot be negative ({price_per_gpu_hour})")
    if weights not in WEIGHTS:
        raise ValueError(f"--weights must be one of {', '.join(WEIGHTS)}, not '{weights}'")
    if kv_cache not in KV_CACHE:
        raise ValueError(f"--kv-cache must be one of {', '.join(KV_CACHE)}, not '{kv_cache}'")


def default_max_model_len(spec: ModelSpec) -> int:
    return min(spec.max_context, DEFAULT_MAX_MODEL_LEN_CAP) if spec.max_context else FALLBACK_MAX_MODEL_LEN


def _is_small_4(model: str) -> bool:
    return model == "mistral-small-4" or "mistral-small-4-119b" in model.lower()


def _checkpoint_notes(model: str, weights: str) -> tuple[str, ...]:
    if model == "mistral-small-4" and weights not in CHECKPOINTS:
        return (f"Mistral publishes Small 4 in FP8 and NVFP4 only: {weights} sizes a converted copy, and the "
                "command names the FP8 checkpoint; point --model at your converted one",)
    if weights in ("nvfp4", "int4") and quantization_flag(model, weights) is None and model != "mistral-small-4":
        return (f"vLLM cannot quantize to {weights} while loading: serve a pre-quantized {weights} checkpoint "
                "of this model (the command names the one given)",)
    return ()


def _context_notes(model: str, spec: ModelSpec, length: int) -> tuple[str, ...]:
    if _is_small_4(model) and length > SMALL_4_SERVED_CONTEXT:
        return (f"warning: --max-model-len {length:,} is beyond the {SMALL_4_SERVED_CONTEXT:,} tokens (256K) "
                f"Mistral serves Small 4 at; its config advertises {spec.max_context:,} positions (YaRN), but "
                "Mistral and vLLM's recipe stop at 256K",)
    return ()


def _utilization(model: str, utilization: Optional[float]) -> float:
    recipe = recipe_for(model)
    if utilization is not None:
        return utilization
    return recipe.gpu_memory_utilization if recipe else VLLM_DEFAULT_UTILIZATION


def _four(length: int, one: Sizing, card: GPU, weights: Weights, kv_cache: KvCache, utilization: Optional[float],
          price_per_gpu_hour: Optional[float], reserve_bytes: int) -> tuple[int, tuple[FourServerRow, ...]]:
    """The seed guides' four single-purpose servers, each sized for the same context (capped at its model's)
    and together for as many concurrent full-length sequences as the one model holds: each at least a
    quarter of them, rounded up. Each at its own default memory utilization unless one was given."""
    target = max(1, -(-one.max_concurrent_sequences // 4))
    rows = []
    for role, name in FOUR_SERVERS:
        other = load_spec(name)
        context = min(length, other.max_context or length)
        rows.append(FourServerRow(role, name, smallest_fit(
            other, card, weights, kv_cache, context, _utilization(name, utilization), price_per_gpu_hour,
            reserve_bytes, min_sequences=target), target))
    return target, tuple(rows)


def make_plan(model: str = "mistral-small-4", gpu: str = "h200", gpus: int = 2, weights: Weights = "fp8",
              kv_cache: KvCache = "auto", max_model_len: Optional[int] = None,
              utilization: Optional[float] = None, concurrency: Optional[int] = None,
              price_per_gpu_hour: Optional[float] = None, compare_four: bool = False,
              served_model_name: Optional[str] = None, port: int = 8000, *, host: str = "127.0.0.1",
              reserve_bytes: Optional[int] = None, max_num_seqs: Optional[int] = None,
              attention_backend: Optional[str] = None, sglang_port: int = 30000,
              vllm_command: Sequence[str] = DEFAULT_VLLM_COMMAND,
              shutdown_timeout: int = DEFAULT_SHUTDOWN_TIMEOUT_S) -> Plan:
    """Raises ``ValueError`` (``SpecError`` among them) with one clear line for bad input.

    Unset launch settings come from vLLM's recipe for the model where there is one (Small 4:
    ``--gpu-memory-utilization 0.8 --max-num-seqs 128 --max-num-batched-tokens 16384``), else from vLLM's
    defaults. ``host``/``port`` are where the vLLM command listens: loopback for the supervisor of
    ``serve --engine vllm``; ``unimodel plan`` prints it for a separate GPU host. ``vllm_command`` starts the
    vLLM command (``vllm serve``; the model goes where it takes it, see ``launch.model_args``).
    ``shutdown_timeout`` is vLLM's ``--shutdown-timeout``: the seconds in-flight requests get on SIGTERM (every
    planned command drains for that long, the one ``serve --engine vllm`` supervises included).
    """
    check_shutdown_timeout(shutdown_timeout)
    _check(gpus, max_model_len, utilization, concurrency, price_per_gpu_hour, weights, kv_cache, reserve_bytes,
           max_num_seqs)
    card = find_gpu(gpu)
    spec = load_spec(model)
    recipe = recipe_for(model)
    util = _utilization(model, utilization)
    seqs = max_num_seqs if max_num_seqs is not None else (recipe.max_num_seqs if recipe else None)
    reserve = RESERVE_BYTES if reserve_bytes is None else reserve_bytes
    length = max_model_len or default_max_model_len(spec)
    sizing = size(spec, card, gpus, weights, kv_cache, length, util, concurrency, price_per_gpu_hour,
                  reserve_bytes=reserve, max_num_seqs=seqs)
    target, four = (_four(length, sizing, card, weights, kv_cache, utilization, price_per_gpu_hour, reserve)
                    if compare_four else (0, ()))
    seqs_source = ("--max-num-seqs" if max_num_seqs is not None else recipe.source if recipe
                   else "vLLM's default for this GPU")
    return Plan(model=model, spec=spec, sizing=sizing,
                vllm=vllm_argv(spec, sizing, model, served_model_name=served_model_name, host=host, port=port,
                               attention_backend=attention_backend,
                               max_num_batched_tokens=recipe.max_num_batched_tokens if recipe else None,
                               command=vllm_command, shutdown_timeout=shutdown_timeout),
                sglang=sglang_argv(spec, sizing, model, served_model_name=served_model_name, host=host,
                                   port=sglang_port),
                four=four, four_target_sequences=target,
                notes=(sizing.notes + _checkpoint_notes(model, weights) + _context_notes(model, spec, length)
                       + attention_backend_notes(spec, sizing, attention_backend)),
                served_model_name=served_model_name or model, host=host, port=port,
                max_num_seqs_source=seqs_source)


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
