"""The engines' own settings types: small frozen values the composition root fills from the server's settings.

Nothing in ``engines/`` reads the settings object; each builder in ``engines/factory.py`` takes one of these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from unimodel.images.decode import ImageLimits

FamilyName = Literal["mistral", "think-tags"]
ParseMode = Literal["auto", "upstream", "gateway"]


@dataclass(frozen=True)
class UpstreamOptions:
    """What every upstream engine the server builds shares: how it talks to its server and parses answers."""

    api_key: Optional[str] = None
    parse_mode: ParseMode = "auto"
    family: FamilyName = "mistral"
    families: Mapping[str, FamilyName] = field(default_factory=dict)
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0
    max_connections: int = 256


@dataclass(frozen=True)
class PoolOptions:
    """An upstream pool (``engines/pool/``): how it chooses among its replicas, when a replica counts as
    saturated, how long requests may wait at the gateway when all are, and each replica's circuit breaker."""

    policy: Literal["balanced", "round-robin"] = "balanced"
    scrape_interval_s: float = 1.0
    discovery_interval_s: float = 5.0
    connect_timeout_s: float = 5.0
    max_waiting: int = 8
    max_kv_usage: float = 0.95
    max_inflight: Optional[int] = None
    queue_size: int = 1024
    queue_timeout_s: float = 30.0
    tries: int = 3
    prefix_block_bytes: int = 256
    prefix_max_blocks: int = 256
    prefix_cache_blocks: int = 16384
    sessions: int = 100_000
    breaker_failures: int = 5
    breaker_window_s: float = 30.0
    breaker_cooldown_s: float = 30.0
    breaker_min_callers: int = 2


@dataclass(frozen=True)
class LocalOptions:
    """The embedded engine: which checkpoint, where it runs, and its batch and memory bounds."""

    model: str
    served_model_name: Optional[str] = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    max_model_len: Optional[int] = None
    max_num_seqs: int = 16
    max_queue: int = 64
    queue_timeout_s: float = 60.0
    max_prefill_tokens: int = 512
    kv_memory_gb: Optional[float] = None
    cpu_threads: Optional[int] = None
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    family: Optional[FamilyName] = None  # None: recognised from the checkpoint
    cache_dir: Optional[Path] = None


@dataclass(frozen=True)
class VllmOptions:
    """vLLM as we launch it: the command that starts it, the model, the hardware to plan for (a GPU, or ``cpu``
    for vLLM's CPU build), and the flags to add or override."""

    model: str = "mistral-small-4"
    served_model_name: Optional[str] = None
    gpu: Optional[str] = None  # a catalog key, or "cpu"; None: what nvidia-smi reports
    gpus: Optional[int] = None
    weights: Literal["bf16", "fp8", "nvfp4", "int4"] = "fp8"
    kv_cache: Literal["auto", "bf16", "fp8"] = "auto"
    max_model_len: Optional[int] = None
    args: tuple[str, ...] = ()
    port: Optional[int] = None  # the child's loopback port; None: a free one
    command: tuple[str, ...] = ("vllm", "serve")  # the model and the flags follow it
    cpu_kv_gib: int = 1  # gpu "cpu": the KV cache in GiB (VLLM_CPU_KVCACHE_SPACE)
    cache_dir: Optional[Path] = None  # where a built test checkpoint (tiny-scripted, tiny-random-native) lives
