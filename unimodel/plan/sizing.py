"""Memory, KV cache, concurrency, decode-speed bound and cost for one model on one GPU configuration.

Accounted as vLLM does at start-up: ``memory × utilization − weights per rank − reserve`` is the KV pool
of each rank; MLA's compressed KV (``kv_lora_rank + qk_rope_head_dim`` per layer) is replicated on every
tensor-parallel rank, GQA's K and V heads are split across them. The reserve (activation peak at the
default 8K batched tokens, CUDA graphs, NCCL buffers) is measured by vLLM's profiler at start; we take a
typical 3 GB per GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from unimodel.plan.catalog import GPU
from unimodel.plan.specs import ModelSpec

Weights = Literal["bf16", "fp8", "nvfp4", "int4"]
KvCache = Literal["auto", "bf16", "fp8"]

#: bytes per parameter of a quantized linear layer, scales included
#:   fp8: 1 byte + an fp32 scale per 128x128 block; nvfp4: 4 bits + an fp8 scale per 16 values;
#:   int4 (AWQ/GPTQ, group 128): 4 bits + an fp16 scale and a 4-bit zero per 128 values
QUANT_BYTES: dict[str, float] = {"bf16": 2.0, "fp8": 1.0 + 4 / (128 * 128), "nvfp4": 0.5 + 1 / 16,
                                 "int4": 0.5 + 2.5 / 128}
RESERVE_BYTES = 3_000_000_000
HOURS_PER_MONTH = 730


@dataclass(frozen=True)
class Sizing:
    gpu: GPU
    gpus: int
    weights: Weights
    kv_dtype: Literal["bf16", "fp8"]
    max_model_len: int
    utilization: float
    weights_bytes: int
    weights_bytes_per_gpu: int
    kv_bytes_per_token: int  # one token's KV, all layers, as each rank stores it
    kv_pool_bytes_per_gpu: int
    kv_cache_tokens: int
    max_concurrent_sequences: int
    fits: bool
    reason: Optional[str]
    concurrency: int
    context_tokens: int  # for the speed bound: the average position in a full-length sequence
    decode_tok_s_batch1: float
    decode_tok_s_at_concurrency: float
    hourly_usd: float

    @property
    def monthly_usd(self) -> float:
        return self.hourly_usd * HOURS_PER_MONTH


def weight_bytes(spec: ModelSpec, weights: Weights, tp: int) -> tuple[int, int]:
    """(all weights, the weights one rank holds)."""
    total = per_gpu = 0.0
    for part in spec.parts:
        b = part.params * (QUANT_BYTES[weights] if part.quantized else 2.0)
        total += b
        per_gpu += b / tp if part.split else b
    return int(total), int(per_gpu)


def kv_bytes_per_token(spec: ModelSpec, kv_dtype: str, tp: int) -> int:
    """One token's KV cache as one rank stores it (MLA: replicated; GQA: this rank's heads)."""
    elem = 1 if kv_dtype == "fp8" else 2
    if spec.attention == "mla":
        return (spec.kv_lora_rank + spec.qk_rope_head_dim) * spec.layers * elem
    heads_per_rank = max(1, -(-spec.kv_heads // tp))
    return 2 * heads_per_rank * spec.head_dim * spec.layers * elem


def _bytes_per_step(spec: ModelSpec, weights: Weights, tp: int, batch: int, kv_per_token: int,
                    context: int) -> float:
    """Bytes one rank reads from memory for one decode step of ``batch`` sequences."""
    read = 0.0
    for part in spec.parts:
        if part.name in ("embeddings", "vision tower", "projector"):
            continue  # a lookup of a few rows; the vision side runs at prefill
        b = part.params * (QUANT_BYTES[weights] if part.quantized else 2.0) / (tp if part.split else 1)
        if part.name == "routed experts" and spec.experts:
            touched = spec.experts * (1 - (1 - spec.experts_per_token / spec.experts) ** batch)
            read += b * touched / spec.experts
        else:
            read += b * part.active
    return read + batch * context * kv_per_token


def size(spec: ModelSpec, gpu: GPU, gpus: int, weights: Weights, kv_cache: KvCache, max_model_len: int,
         utilization: float = 0.9, concurrency: Optional[int] = None,
         price_per_gpu_hour: Optional[float] = None) -> Sizing:
    kv_dtype = "bf16" if kv_cache == "auto" else kv_cache
    total, per_gpu = weight_bytes(spec, weights, gpus)
    kv_tok = kv_bytes_per_token(spec, kv_dtype, gpus)
    pool = int(gpu.memory_bytes * utilization) - per_gpu - RESERVE_BYTES
    tokens = max(0, pool) // kv_tok
    seqs = tokens // max_model_len
    reason = None
    if weights == "nvfp4" and not gpu.fp4:
        reason = f"NVFP4 weights need FP4 tensor cores (Blackwell); the {gpu.name} has none"
    elif spec.max_context and max_model_len > spec.max_context:
        reason = f"--max-model-len {max_model_len} exceeds the model's context of {spec.max_context} tokens"
    elif pool <= 0:
        reason = (f"weights take {per_gpu / 1e9:.1f} GB per GPU, more than the "
                  f"{gpu.memory_bytes * utilization / 1e9:.1f} GB usable minus a {RESERVE_BYTES / 1e9:.0f} GB "
                  "reserve; add GPUs or lower the precision")
    elif seqs < 1:
        reason = (f"the KV pool holds {tokens} tokens, less than one sequence of {max_model_len}; "
                  "lower --max-model-len, use --kv-cache fp8, or add GPUs")
    conc = concurrency if concurrency else max(1, min(seqs, 256))
    context = max(1, max_model_len // 2)
    bw = gpu.bandwidth_tbs * 1e12
    speed1 = bw / _bytes_per_step(spec, weights, gpus, 1, kv_tok, context)
    speed_c = conc * bw / _bytes_per_step(spec, weights, gpus, conc, kv_tok, context)
    price = gpu.price_per_hour if price_per_gpu_hour is None else price_per_gpu_hour
    return Sizing(gpu=gpu, gpus=gpus, weights=weights, kv_dtype=kv_dtype, max_model_len=max_model_len,
                  utilization=utilization, weights_bytes=total, weights_bytes_per_gpu=per_gpu,
                  kv_bytes_per_token=kv_tok, kv_pool_bytes_per_gpu=max(0, pool), kv_cache_tokens=tokens,
                  max_concurrent_sequences=seqs, fits=reason is None, reason=reason, concurrency=conc,
                  context_tokens=context, decode_tok_s_batch1=speed1, decode_tok_s_at_concurrency=speed_c,
                  hourly_usd=price * gpus)


def smallest_fit(spec: ModelSpec, gpu: GPU, weights: Weights, kv_cache: KvCache, max_model_len: int,
                 utilization: float = 0.9, price_per_gpu_hour: Optional[float] = None) -> Sizing:
    """The fewest GPUs (1, 2, 4, 8, as tensor parallelism allows) that hold the model and one sequence."""
    last = None
    for n in (1, 2, 4, 8):
        if spec.attention_heads % n:
            continue
        last = size(spec, gpu, n, weights, kv_cache, max_model_len, utilization,
                    price_per_gpu_hour=price_per_gpu_hour)
        if last.fits:
            return last
    assert last is not None
    return last
