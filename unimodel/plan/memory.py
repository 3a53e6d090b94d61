"""Weights and KV-cache memory, accounted as vLLM does at start-up.

Weights: each part of the spec at its checkpoint precision (quantized linear layers at the ``--weights``
precision, scales included; embeddings, lm_head, norms, router and the vision side in BF16); a rank holds its
share of the split parts and a full copy of the replicated ones.

KV cache per token, as one rank stores it:

- MLA (Mistral Small 4, DeepSeek): the compressed latent and the shared RoPE key,
  ``(kv_lora_rank + qk_rope_head_dim) × layers × bytes``. There is one latent "head", so tensor parallelism
  cannot split it: every rank stores the whole of it (replicated, not divided by TP).
- GQA: ``2 (K and V) × kv_heads × head_dim × layers × bytes`` in all; each rank stores its share of the KV
  heads (at least one head: beyond TP = kv_heads, vLLM replicates heads).

KV pool of a rank: ``memory × utilization − weights on that rank − reserve`` (the activation peak of the
profiling run, CUDA graphs, NCCL buffers: vLLM measures it at start; we take a typical 3 GB per GPU). Every
rank holds every token (its heads of it, or a full MLA copy), so tokens in cache = pool ÷ per-rank bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from unimodel.plan.catalog import GPU
from unimodel.plan.specs import ModelSpec

Weights = Literal["bf16", "fp8", "nvfp4", "int4"]
KvCache = Literal["auto", "bf16", "fp8"]
WEIGHTS: tuple[str, ...] = ("bf16", "fp8", "nvfp4", "int4")
KV_CACHE: tuple[str, ...] = ("auto", "bf16", "fp8")

#: bytes per parameter of a quantized linear layer, scales included
#:   fp8: 1 byte + an fp32 scale per 128x128 block; nvfp4: 4 bits + an fp8 scale per 16 values;
#:   int4 (AWQ/GPTQ, group 128): 4 bits + an fp16 scale and a 4-bit zero per 128 values
QUANT_BYTES: dict[str, float] = {"bf16": 2.0, "fp8": 1.0 + 4 / (128 * 128), "nvfp4": 0.5 + 1 / 16,
                                 "int4": 0.5 + 2.5 / 128}
BF16_BYTES = 2
RESERVE_BYTES = 3_000_000_000


def kv_dtype_of(kv_cache: str) -> Literal["bf16", "fp8"]:
    """vLLM's ``auto`` is the model's dtype: BF16 activations, also for FP8/NVFP4 weights."""
    return "fp8" if kv_cache == "fp8" else "bf16"


def part_bytes(params: int, quantized: bool, weights: str) -> float:
    return params * (QUANT_BYTES[weights] if quantized else BF16_BYTES)


def weight_bytes(spec: ModelSpec, weights: str, tp: int) -> tuple[int, int]:
    """(all weights, the weights one rank holds)."""
    total = per_gpu = 0.0
    for part in spec.parts:
        b = part_bytes(part.params, part.quantized, weights)
        total += b
        per_gpu += b / tp if part.split else b
    return int(total), int(per_gpu)


def kv_bytes_per_token(spec: ModelSpec, kv_dtype: str, tp: int) -> int:
    """One token's KV cache, all layers, as one rank stores it (MLA: replicated; GQA: this rank's heads)."""
    elem = 1 if kv_dtype == "fp8" else 2
    if spec.attention == "mla":
        return (spec.kv_lora_rank + spec.qk_rope_head_dim) * spec.layers * elem
    heads_per_rank = max(1, -(-spec.kv_heads // tp))
    return 2 * heads_per_rank * spec.head_dim * spec.layers * elem


@dataclass(frozen=True)
class Memory:
    weights: str
    kv_dtype: Literal["bf16", "fp8"]
    weights_bytes: int
    weights_bytes_per_gpu: int
    kv_bytes_per_token: int
    usable_bytes_per_gpu: int  # memory x utilization
    kv_pool_bytes_per_gpu: int  # may be negative: the weights do not fit
    kv_cache_tokens: int
    max_concurrent_sequences: int


def memory(spec: ModelSpec, gpu: GPU, gpus: int, weights: str, kv_cache: str, max_model_len: int,
           utilization: float, reserve_bytes: int = RESERVE_BYTES) -> Memory:
    kv_dtype = kv_dtype_of(kv_cache)
    total, per_gpu = weight_bytes(spec, weights, gpus)
    kv_tok = kv_bytes_per_token(spec, kv_dtype, gpus)
    usable = int(gpu.memory_bytes * utilization)
    pool = usable - per_gpu - reserve_bytes
    tokens = max(0, pool) // kv_tok
    return Memory(weights=weights, kv_dtype=kv_dtype, weights_bytes=total, weights_bytes_per_gpu=per_gpu,
                  kv_bytes_per_token=kv_tok, usable_bytes_per_gpu=usable, kv_pool_bytes_per_gpu=pool,
                  kv_cache_tokens=tokens, max_concurrent_sequences=tokens // max_model_len)
