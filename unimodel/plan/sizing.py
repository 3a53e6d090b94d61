"""One model on one GPU configuration: memory, whether it fits and why not, a decode-speed bound, and cost.

The speed bound is memory bandwidth only: a decode step must read, on each rank, its share of the weights
that step touches (attention, the shared expert, the routed experts the batch selects, lm_head) and the KV
cache of every sequence in the batch. ``tokens/s ≤ batch × bandwidth ÷ bytes read per step``. Real engines
land below it (kernels, communication, scheduling); it tells configurations apart, not what you will measure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from unimodel.plan.catalog import GPU
from unimodel.plan.cost import HOURS_PER_MONTH, Cost, cost_of
from unimodel.plan.memory import (
    QUANT_BYTES, RESERVE_BYTES, KvCache, Memory, Weights, kv_bytes_per_token, memory, part_bytes, weight_bytes,
)
from unimodel.plan.specs import ModelSpec

__all__ = ["HOURS_PER_MONTH", "QUANT_BYTES", "RESERVE_BYTES", "KvCache", "Sizing", "Weights",
           "kv_bytes_per_token", "size", "smallest_fit", "weight_bytes"]


@dataclass(frozen=True)
class Sizing:
    gpu: GPU
    gpus: int
    max_model_len: int
    utilization: float
    memory: Memory
    cost: Cost
    reason: Optional[str]  # why it does not fit; None when it does
    concurrency: int  # sequences decoded together for the speed bound
    context_tokens: int  # for the speed bound: the average position in a full-length sequence
    decode_tok_s_batch1: float
    decode_tok_s_at_concurrency: float
    notes: tuple[str, ...] = field(default_factory=tuple)
    max_num_seqs: Optional[int] = None  # the launch's --max-num-seqs; None: vLLM's default for the GPU

    @property
    def fits(self) -> bool:
        return self.reason is None

    @property
    def effective_max_num_seqs(self) -> int:
        """The most sequences vLLM will run at once: the launch's ``--max-num-seqs`` or vLLM's default."""
        return self.max_num_seqs or self.gpu.vllm_default_max_num_seqs

    @property
    def reserve_bytes_per_gpu(self) -> int:
        return self.memory.reserve_bytes_per_gpu

    # the memory and cost figures, flat, for the report and for callers
    @property
    def weights(self) -> str:
        return self.memory.weights

    @property
    def kv_dtype(self) -> str:
        return self.memory.kv_dtype

    @property
    def weights_bytes(self) -> int:
        return self.memory.weights_bytes

    @property
    def weights_bytes_per_gpu(self) -> int:
        return self.memory.weights_bytes_per_gpu

    @property
    def kv_bytes_per_token(self) -> int:
        return self.memory.kv_bytes_per_token

    @property
    def kv_pool_bytes_per_gpu(self) -> int:
        return max(0, self.memory.kv_pool_bytes_per_gpu)

    @property
    def kv_cache_tokens(self) -> int:
        return self.memory.kv_cache_tokens

    @property
    def max_concurrent_sequences(self) -> int:
        return self.memory.max_concurrent_sequences

    @property
    def hourly_usd(self) -> float:
        return self.cost.hourly_usd

    @property
    def monthly_usd(self) -> float:
        return self.cost.monthly_usd


def _bytes_per_step(spec: ModelSpec, weights: str, tp: int, batch: int, kv_per_token: int, context: int) -> float:
    """Bytes one rank reads from memory for one decode step of ``batch`` sequences at ``context`` tokens."""
    read = 0.0
    for part in spec.parts:
        if part.name in ("embeddings", "vision tower", "projector"):
            continue  # a lookup of a few rows; the vision side runs at prefill
        b = part_bytes(part, weights) / (tp if part.split else 1)
        if part.name == "routed experts" and spec.experts:
            # distinct experts a batch selects, each token picking k of n: n (1 - (1 - k/n)^batch)
            touched = spec.experts * (1 - (1 - spec.experts_per_token / spec.experts) ** batch)
            read += b * touched / spec.experts
        else:
            read += b * part.active
    return read + batch * context * kv_per_token


def _reason(spec: ModelSpec, gpu: GPU, gpus: int, mem: Memory, max_model_len: int) -> Optional[str]:
    if spec.attention_heads % gpus:
        return (f"tensor parallelism over {gpus} GPUs needs the {spec.attention_heads} attention heads to "
                "divide evenly; use 1, 2, 4 or 8 GPUs")
    if spec.max_context and max_model_len > spec.max_context:
        return f"--max-model-len {max_model_len:,} exceeds the model's context of {spec.max_context:,} tokens"
    if mem.kv_pool_bytes_per_gpu <= 0:
        return (f"weights take {mem.weights_bytes_per_gpu / 1e9:.1f} GB per GPU, more than the "
                f"{mem.usable_bytes_per_gpu / 1e9:.1f} GB usable on a {gpu.name} less a "
                f"{mem.reserve_bytes_per_gpu / 1e9:.1f} GB reserve; add GPUs or lower the precision")
    if mem.max_concurrent_sequences < 1:
        return (f"the KV cache holds {mem.kv_cache_tokens:,} tokens, less than one sequence of "
                f"{max_model_len:,}; lower --max-model-len, use --kv-cache fp8, or add GPUs")
    return None


def _notes(gpu: GPU, weights: str) -> tuple[str, ...]:
    if weights == "nvfp4" and not gpu.fp4:
        return (f"the {gpu.name} has no FP4 tensor cores: vLLM runs NVFP4 weights through weight-only "
                "(W4A16 Marlin) kernels, slower at prefill than on Blackwell",)
    if weights == "fp8" and not gpu.fp8:
        return (f"the {gpu.name} has no FP8 tensor cores: vLLM runs FP8 weights through weight-only "
                "(W8A16 Marlin) kernels",)
    return ()


def size(spec: ModelSpec, gpu: GPU, gpus: int, weights: Weights, kv_cache: KvCache, max_model_len: int,
         utilization: float = 0.9, concurrency: Optional[int] = None,
         price_per_gpu_hour: Optional[float] = None, reserve_bytes: int = RESERVE_BYTES,
         max_num_seqs: Optional[int] = None) -> Sizing:
    """``concurrency`` (the speed bound's batch) defaults to the full-length sequences that fit, at most the
    sequences vLLM runs at once (``max_num_seqs``, or vLLM's default for the GPU)."""
    mem = memory(spec, gpu, gpus, weights, kv_cache, max_model_len, utilization, reserve_bytes)
    cap = max_num_seqs or gpu.vllm_default_max_num_seqs
    conc = concurrency if concurrency else max(1, min(mem.max_concurrent_sequences, cap))
    context = max(1, max_model_len // 2)
    bw = gpu.bandwidth_tbs * 1e12
    kv_tok = mem.kv_bytes_per_token
    return Sizing(gpu=gpu, gpus=gpus, max_model_len=max_model_len, utilization=utilization, memory=mem,
                  cost=cost_of(gpu, gpus, price_per_gpu_hour),
                  reason=_reason(spec, gpu, gpus, mem, max_model_len), concurrency=conc, context_tokens=context,
                  decode_tok_s_batch1=bw / _bytes_per_step(spec, weights, gpus, 1, kv_tok, context),
                  decode_tok_s_at_concurrency=conc * bw / _bytes_per_step(spec, weights, gpus, conc, kv_tok,
                                                                           context),
                  notes=_notes(gpu, weights), max_num_seqs=max_num_seqs)


def smallest_fit(spec: ModelSpec, gpu: GPU, weights: Weights, kv_cache: KvCache, max_model_len: int,
                 utilization: float = 0.9, price_per_gpu_hour: Optional[float] = None,
                 reserve_bytes: int = RESERVE_BYTES, min_sequences: int = 1) -> Sizing:
    """The fewest GPUs (1, 2, 4, 8, as tensor parallelism allows) that hold the model and ``min_sequences``
    full-length sequences; failing that, the largest that fits at all (check ``max_concurrent_sequences``),
    or the 8-GPU one that does not fit (its ``reason`` says why)."""
    best: Optional[Sizing] = None
    last: Optional[Sizing] = None
    for n in (1, 2, 4, 8):
        if spec.attention_heads % n:
            continue
        last = size(spec, gpu, n, weights, kv_cache, max_model_len, utilization,
                    price_per_gpu_hour=price_per_gpu_hour, reserve_bytes=reserve_bytes)
        if last.fits:
            if last.max_concurrent_sequences >= min_sequences:
                return last
            best = last
    assert last is not None  # n = 1 always divides
    return best or last
