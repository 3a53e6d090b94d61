"""What each GPU holds in a multi-node layout: weights and KV cache per GPU, and the full-length sequences the
whole deployment holds. The one-node accounting of ``memory`` (CUDA's total × utilization, less the weights
and the non-KV reserve, is the KV pool), applied per layout:

- ``replicas``: N copies of the one-node plan, each tensor parallel over its node's G GPUs: the one-node
  sizing as it is, N independent KV caches.
- ``dp-ep``: one engine of D = N × G data-parallel ranks, one GPU each (tensor parallel 1, as vLLM's
  DeepSeek-style deployments run): every rank holds the whole of the non-expert weights (attention, shared
  experts, embeddings, the vision side) and its share of the routed experts, split over all D GPUs by expert
  parallelism (``ceil(experts / D)`` of them: vLLM gives the first ranks one more when D does not divide), and
  its own KV cache for its own sequences (MLA: the whole latent, as on any rank). D independent KV caches.
- ``tp-pp``: one engine, tensor parallel over a node's G GPUs and pipeline parallel over the N nodes: each
  stage holds ``ceil(layers / N)`` of the layers (the per-layer parts scaled so; their split parts divided by
  G), stage 0 also the embeddings and the vision side, the last stage lm_head (or, tied, a copy of the
  embeddings); the fuller of those is what must fit. Each stage keeps its layers' KV cache of every token: one
  KV cache. An estimate: vLLM splits the layers evenly by count, and a model's first dense layers weigh less
  than its MoE ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from unimodel.plan.catalog import GPU
from unimodel.plan.memory import kv_bytes_per_token, kv_dtype_of, part_bytes, weight_bytes
from unimodel.plan.sizing import Sizing
from unimodel.plan.specs import ModelSpec

#: the parts pipeline stage 0 holds besides its layers (the last stage holds lm_head)
_STAGE_0 = ("embeddings", "vision tower", "projector")

#: when each layout pays, for the operator choosing one
WHEN_IT_PAYS = {
    "replicas": "Replicas first: each node serves the whole model alone, so nothing crosses the network between "
                "GPUs, a node can fail or be drained alone, and the gateway balances by queue, KV use and "
                "prefix cache. Mistral Small 4 fits one node (FP8 weights ~121 GB on 2x H200).",
    "dp-ep": "dp-ep pays when the experts and the KV cache need more memory than one node has, or for very high "
             "batch throughput across nodes: each GPU holds 1/D of the routed experts, leaving more room for KV "
             "cache, and (MLA models, Small 4 among them) its own sequences' KV latent only, where tensor "
             "parallelism copies it to every GPU. It costs an all-to-all between all GPUs at every MoE layer (a "
             "fast interconnect, InfiniBand or RoCE, is a must), one engine that stops when any node fails, and "
             "vLLM's own balancing between its ranks behind the gateway.",
    "tp-pp": "tp-pp only when one copy of the model does not fit one node: every node holds 1/N of the layers, "
             "activations cross the network between stages and the pipeline adds latency, and the Ray cluster "
             "stops when any node fails.",
}


@dataclass(frozen=True)
class LayoutMemory:
    """The memory figures of a layout, per GPU, and its capacity in full-length sequences."""
    layout: str
    nodes: int
    gpus_per_node: int
    tensor_parallel: int
    pipeline_parallel: int
    data_parallel: int  # dp-ep: the engine's data-parallel ranks; replicas: the independent servers; tp-pp: 1
    expert_parallel: int  # GPUs the routed experts are split over (dp-ep); 0 where expert parallelism is off
    kv_dtype: str
    weights_bytes: int  # the whole model, once
    weights_bytes_per_gpu: int
    kv_bytes_per_token: int  # one token's KV cache as one GPU stores it
    usable_bytes_per_gpu: int
    reserve_bytes_per_gpu: int
    kv_pool_bytes_per_gpu: int  # may be negative: the weights do not fit
    kv_cache_tokens: int  # tokens one KV cache holds: a replica's, a data-parallel rank's, the pipeline's
    kv_caches: int  # independent KV caches: N replicas, D ranks, one pipeline
    max_model_len: int
    reason: Optional[str]  # why it does not fit; None when it does

    @property
    def fits(self) -> bool:
        return self.reason is None

    @property
    def sequences_per_cache(self) -> int:
        return self.kv_cache_tokens // self.max_model_len

    @property
    def max_concurrent_sequences(self) -> int:
        """Full-length sequences the whole deployment holds at once (a sequence lives in one KV cache)."""
        return self.kv_caches * self.sequences_per_cache

    @property
    def sequences_per_node(self) -> int:
        """Full-length sequences a node's GPUs hold (tp-pp: each node holds its stage of every sequence)."""
        if self.layout == "dp-ep":
            return self.gpus_per_node * self.sequences_per_cache
        return self.sequences_per_cache


def replicas_memory(sizing: Sizing, nodes: int) -> LayoutMemory:
    """N copies of the one-node sizing."""
    m = sizing.memory
    return LayoutMemory("replicas", nodes, sizing.gpus, sizing.gpus, 1, nodes, 0, m.kv_dtype, m.weights_bytes,
                        m.weights_bytes_per_gpu, m.kv_bytes_per_token, m.usable_bytes_per_gpu,
                        m.reserve_bytes_per_gpu, m.kv_pool_bytes_per_gpu, m.kv_cache_tokens, nodes,
                        sizing.max_model_len,
                        None if sizing.fits else f"one replica must fit one node of {sizing.gpus}x "
                                                 f"{sizing.gpu.name}: {sizing.reason}")


def dp_ep_memory(spec: ModelSpec, gpu: GPU, nodes: int, gpus: int, weights: str, kv_cache: str,
                 max_model_len: int, utilization: float, reserve_bytes: int) -> LayoutMemory:
    """One data-parallel rank per GPU, the routed experts split over all of them. ``ValueError`` for a model
    without routed experts or with fewer of them than GPUs."""
    ranks = nodes * gpus
    if not spec.experts:
        raise ValueError(f"--layout dp-ep splits the routed experts of a mixture-of-experts model over the GPUs, "
                         f"and {spec.name} is dense: use --layout replicas (or tp-pp if one copy does not fit "
                         "a node)")
    if ranks > spec.experts:
        raise ValueError(f"--layout dp-ep over {ranks} GPUs needs at least {ranks} routed experts to split, and "
                         f"{spec.name} has {spec.experts}: use fewer nodes, or --layout replicas")
    per_gpu = 0.0
    for part in spec.parts:
        b = part_bytes(part, weights)
        per_gpu += b * -(-spec.experts // ranks) / spec.experts if part.name == "routed experts" else b
    kv_dtype = kv_dtype_of(kv_cache)
    return _layout("dp-ep", spec, gpu, nodes, gpus, 1, 1, ranks, ranks, kv_dtype, weights, int(per_gpu),
                   kv_bytes_per_token(spec, kv_dtype, 1), ranks, max_model_len, utilization, reserve_bytes)


def tp_pp_memory(spec: ModelSpec, gpu: GPU, nodes: int, gpus: int, weights: str, kv_cache: str,
                 max_model_len: int, utilization: float, reserve_bytes: int) -> LayoutMemory:
    """Tensor parallel within a node, one pipeline stage per node. ``ValueError`` for more stages than layers."""
    if nodes > spec.layers:
        raise ValueError(f"--layout tp-pp puts at least one layer on each node, and {spec.name} has "
                         f"{spec.layers} layers, fewer than {nodes} nodes")
    share = -(-spec.layers // nodes) / spec.layers  # the fullest stage's share of the layers
    per_layer = first = last = 0.0
    has_lm_head = any(p.name == "lm_head" for p in spec.parts)
    for part in spec.parts:
        b = part_bytes(part, weights) / (gpus if part.split else 1)
        if part.name in _STAGE_0:
            first += b
            if part.name == "embeddings" and not has_lm_head:
                last += b  # tied: the last stage holds the embedding matrix as its output layer
        elif part.name == "lm_head":
            last += b
        else:
            per_layer += b * share
    kv_dtype = kv_dtype_of(kv_cache)
    kv_tok = kv_bytes_per_token(spec, kv_dtype, gpus) // spec.layers * -(-spec.layers // nodes)
    reason = (f"tensor parallelism over a node's {gpus} GPUs needs the {spec.attention_heads} attention heads to "
              f"divide evenly" if spec.attention_heads % gpus else None)
    return _layout("tp-pp", spec, gpu, nodes, gpus, gpus, nodes, 1, 0, kv_dtype, weights,
                   int(per_layer + max(first, last)), kv_tok, 1, max_model_len, utilization, reserve_bytes, reason)


def _layout(layout: str, spec: ModelSpec, gpu: GPU, nodes: int, gpus: int, tp: int, pp: int, dp: int, ep: int,
            kv_dtype: str, weights: str, per_gpu: int, kv_tok: int, caches: int, max_model_len: int,
            utilization: float, reserve_bytes: int, reason: Optional[str] = None) -> LayoutMemory:
    usable = int(gpu.memory_bytes * utilization)
    pool = usable - per_gpu - reserve_bytes
    tokens = max(0, pool) // kv_tok
    where = f"even across {nodes} nodes of {gpus}x {gpu.name} ({layout}),"
    if reason is None and spec.max_context and max_model_len > spec.max_context:
        reason = f"--max-model-len {max_model_len:,} exceeds the model's context of {spec.max_context:,} tokens"
    if reason is None and pool <= 0:
        reason = (f"{where} the weights take {per_gpu / 1e9:.1f} GB per GPU, more than the "
                  f"{usable / 1e9:.1f} GB usable less a {reserve_bytes / 1e9:.1f} GB reserve; add nodes or GPUs, "
                  "or lower the precision")
    if reason is None and tokens < max_model_len:
        reason = (f"{where} a KV cache holds {tokens:,} tokens, less than one sequence of "
                  f"{max_model_len:,}; lower --max-model-len, use --kv-cache fp8, or add nodes")
    return LayoutMemory(layout, nodes, gpus, tp, pp, dp, ep, kv_dtype, weight_bytes(spec, weights, 1)[0], per_gpu,
                        kv_tok, usable, reserve_bytes, pool, tokens, caches, max_model_len, reason)


__all__ = ["WHEN_IT_PAYS", "LayoutMemory", "dp_ep_memory", "replicas_memory", "tp_pp_memory"]
