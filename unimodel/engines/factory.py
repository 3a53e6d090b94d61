"""The engines' own settings types, and the one place each kind of engine is built from them.

The composition root (``unimodel/compose.py``) turns the server's settings into these small frozen types and
calls the builders here; nothing in ``engines/`` reads the settings object itself. Every
:class:`~unimodel.engines.upstream.UpstreamEngine` the server makes — the primary under ``--engine upstream``,
the one inside ``--engine vllm``, the resilience stage's fallbacks, canary and named upstreams — comes from
:func:`upstream_engine`, so each honours the same timeouts, pool size, parse mode and model families. Heavy
engines (PyTorch, the vLLM supervisor) are imported only when built.
"""

from __future__ import annotations

import logging
import shutil
import socket
from typing import Optional

from unimodel.engines.base import Engine
from unimodel.engines.options import LocalOptions, UpstreamOptions, VllmOptions
from unimodel.engines.upstream import UpstreamEngine
from unimodel.errors import ConfigError

__all__ = ["LocalOptions", "UpstreamOptions", "VllmOptions", "local_engine", "upstream_engine", "vllm_engine"]

def upstream_engine(options: UpstreamOptions, url: str, *, served_model_name: Optional[str] = None,
                    upstream_model: Optional[str] = None, api_key: Optional[str] = None) -> UpstreamEngine:
    """An upstream engine at ``url`` with the shared options; ``api_key`` overrides theirs (a named upstream's
    own key)."""
    return UpstreamEngine(
        url,
        served_model_name=served_model_name,
        upstream_model=upstream_model,
        family=options.family,
        families=dict(options.families),
        parse_mode=options.parse_mode,
        api_key=api_key if api_key is not None else options.api_key,
        connect_timeout_s=options.connect_timeout_s,
        read_timeout_s=options.read_timeout_s,
        max_connections=options.max_connections,
    )


def local_engine(options: LocalOptions) -> Engine:
    """The embedded engine (PyTorch and transformers, imported here)."""
    try:
        from unimodel.engines.local import LocalEngine
    except ImportError as exc:
        raise ConfigError(f"the local engine needs PyTorch and transformers ({exc.name} is missing): "
                          "pip install 'unimodel[local]', or use --engine upstream") from exc
    return LocalEngine(
        options.model,
        served_model_name=options.served_model_name,
        device=options.device,
        dtype=options.dtype,
        max_model_len=options.max_model_len,
        max_num_seqs=options.max_num_seqs,
        max_queue=options.max_queue,
        queue_timeout_s=options.queue_timeout_s,
        max_prefill_tokens=options.max_prefill_tokens,
        kv_memory_gb=options.kv_memory_gb,
        cpu_threads=options.cpu_threads,
        image_limits=options.image_limits,
        model_family=options.family,
        cache_dir=options.cache_dir,
    )


def vllm_engine(options: VllmOptions, upstream: UpstreamOptions) -> Engine:
    """`vllm serve` with the flags `unimodel plan` computes for this machine's GPUs, supervised; requests go
    through an upstream engine built by :func:`upstream_engine`, like any other upstream's."""
    from unimodel.engines.vllm import VllmEngine, merge_args
    from unimodel.plan.planner import detect_gpus, make_plan

    if shutil.which("vllm") is None:
        raise ConfigError("--engine vllm needs vLLM: pip install 'unimodel[vllm]' (or use --engine upstream "
                          "in front of a vLLM you run yourself)")
    gpu, gpus = options.gpu, options.gpus
    if gpu is None:
        found = detect_gpus()
        if found is None:
            raise ConfigError("no known NVIDIA GPU found with nvidia-smi; say which with --vllm-gpu KEY "
                              "and --vllm-gpus N (see `unimodel plan --help`)")
        gpu, gpus = found[0].key, gpus or found[1]
    served = options.served_model_name or options.model
    port = options.port if options.port is not None else _free_port()
    try:
        plan = make_plan(options.model, gpu, gpus or 1, options.weights, options.kv_cache, options.max_model_len,
                         served_model_name=served, port=port)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if not plan.sizing.fits:
        logging.getLogger("unimodel.vllm").warning("the plan says this does not fit: %s", plan.sizing.reason)
    argv = merge_args(plan.vllm, options.args)
    return VllmEngine(argv, port=port, served_model_name=served,
                      upstream=upstream_engine(upstream, f"http://127.0.0.1:{port}/v1", served_model_name=served))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
