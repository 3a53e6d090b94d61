"""Weights and KV-cache memory, accounted as vLLM does at start-up.

Weights: each part of the spec at its checkpoint precision (quantized linear layers at the ``--weights``
precision, scales included; embeddings, lm_head, norms, router, the vision side, and what the published
checkpoints keep BF16 besides, in BF16: see ``specs``); a rank holds its share of the split parts and a full
copy of the replicated ones.

KV cache per token, as one rank stores it:

- MLA (Mistral Small 4, DeepSeek): the compressed latent and the shared RoPE key,
  ``(kv_lora_rank + qk_rope_head_dim) × layers × bytes``. There is one latent "head", so tensor parallelism
  cannot split it: every rank stores the whole of it (replicated, not divided by TP).
- GQA: ``2 (K and V) × kv_heads × head_dim × layers × bytes`` in all; each rank stores its share of the KV
  heads (at least one head: beyond TP = kv_heads, vLLM replicates heads).

KV pool of a rank, as vLLM's GPU worker computes it: ``total × --gpu-memory-utilization − weights − the rest``,
where ``total`` is what CUDA reports (``torch.cuda.mem_get_info``; see ``catalog``) and "the rest" is what its
profiling run measures besides the weights: the activation peak at ``--max-num-batched-tokens`` (the vision
encoder's dummy images included), memory outside PyTorch (NCCL, cuBLAS), and, since vLLM 0.21, its CUDA
graphs. That cannot be known before vLLM runs; ``reserve`` estimates it (``--reserve-gb``). vLLM logged
9.3 GiB (5.6 activations, 1.4 non-torch, 2.4 CUDA graphs) for a text-only MoE with tensor parallelism over
two H200s; the default, 10 GB, allows for that and for Pixtral's profiling pass. Every rank holds every token
(its heads of it, or a full MLA copy), so tokens in cache = pool ÷ per-rank bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from unimodel.plan.catalog import GPU
from unimodel.plan.specs import ModelSpec, Part

Weights = Literal["bf16", "fp8", "nvfp4", "int4"]
KvCache = Literal["auto", "bf16", "fp8"]
WEIGHTS: tuple[str, ...] = ("bf16", "fp8", "nvfp4", "int4")
KV_CACHE: tuple[str, ...] = ("auto", "bf16", "fp8")

#: bytes per parameter of a quantized linear layer, scales included
#:   fp8: 1 byte + an fp32 scale per 128x128 block;
#:   nvfp4: 4 bits + an fp8 (E4M3) scale per 16 values; the two fp32 per-tensor scales (weight and input
#:     global scale) come to 8 bytes a matrix, 0.1 MB over Small 4's 13,932 expert matrices: left out;
#:   int4 (AWQ/GPTQ, group 128): 4 bits + an fp16 scale and a 4-bit zero per 128 values
QUANT_BYTES: dict[str, float] = {"bf16": 2.0, "fp8": 1.0 + 4 / (128 * 128), "nvfp4": 0.5 + 1 / 16,
                                 "int4": 0.5 + 2.5 / 128}
BF16_BYTES = 2
#: default estimate of the non-KV memory vLLM's profiling finds on each GPU (activations, non-torch, CUDA graphs)
RESERVE_BYTES = 10_000_000_000


def kv_dtype_of(kv_cache: str) -> Literal["bf16", "fp8"]:
    """vLLM's ``auto`` is the model's dtype: BF16 activations, also for FP8/NVFP4 weights."""
    return "fp8" if kv_cache == "fp8" else "bf16"


def part_bytes(part: Part, weights: str) -> float:
    return part.params * (BF16_BYTES if part.stays_bf16(weights) else QUANT_BYTES[weights])


def weight_bytes(spec: ModelSpec, weights: str, tp: int) -> tuple[int, int]:
    """(all weights, the weights one rank holds)."""
    total = per_gpu = 0.0
    for part in spec.parts:
        b = part_bytes(part, weights)
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
    usable_bytes_per_gpu: int  # CUDA's total x utilization
    reserve_bytes_per_gpu: int  # the estimated non-KV rest (activations, non-torch, CUDA graphs)
    kv_pool_bytes_per_gpu: int  # may be negative: the weights do not fit
    kv_cache_tokens: int
    max_concurrent_sequences: int  # full-length (max_model_len) sequences the cache holds at once


def memory(spec: ModelSpec, gpu: GPU, gpus: int, weights: str, kv_cache: str, max_model_len: int,
           utilization: float, reserve_bytes: int = RESERVE_BYTES) -> Memory:
    kv_dtype = kv_dtype_of(kv_cache)
    total, per_gpu = weight_bytes(spec, weights, gpus)
    kv_tok = kv_bytes_per_token(spec, kv_dtype, gpus)
    usable = int(gpu.memory_bytes * utilization)
    pool = usable - per_gpu - reserve_bytes
    tokens = max(0, pool) // kv_tok
    return Memory(weights=weights, kv_dtype=kv_dtype, weights_bytes=total, weights_bytes_per_gpu=per_gpu,
                  kv_bytes_per_token=kv_tok, usable_bytes_per_gpu=usable, reserve_bytes_per_gpu=reserve_bytes,
                  kv_pool_bytes_per_gpu=pool, kv_cache_tokens=tokens,
                  max_concurrent_sequences=tokens // max_model_len)
