"""Build the engine named in the settings. Heavy engines are imported only when chosen."""

from __future__ import annotations

from typing import Optional

from unimodel.config import ConfigError, Settings
from unimodel.engines.base import Engine
from unimodel.engines.upstream import UpstreamEngine


def build_engine(settings: Settings) -> Engine:
    if settings.engine == "upstream":

        if not settings.upstream:
            raise ConfigError("--engine upstream needs --upstream URL (e.g. http://gpu-box:8000/v1)")
        return upstream_engine(settings, settings.upstream,
                               served_model_name=settings.served_model_name or settings.model,
                               upstream_model=settings.model)
    if settings.engine == "local":
        if not settings.model:
            raise ConfigError("--engine local needs --model HUB_ID_OR_PATH (or --model tiny-random for a "
                              "small random-weight demo model)")
        try:
            from unimodel.engines.local import LocalEngine
        except ImportError as exc:
            raise ConfigError(f"the local engine needs PyTorch and transformers ({exc.name} is missing): "
                              "pip install 'unimodel[local]', or use --engine upstream") from exc
        return LocalEngine(
            settings.model,
            served_model_name=settings.served_model_name,
            device=settings.device,
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            max_num_seqs=settings.max_num_seqs,
            max_queue=settings.max_queue,
            queue_timeout_s=settings.queue_timeout_s,
            max_prefill_tokens=settings.max_prefill_tokens,
            kv_memory_gb=settings.kv_memory_gb,
            cpu_threads=settings.cpu_threads,
            image_limits=settings.image_limits,
            model_family=settings.model_family if "model_family" in settings.model_fields_set else None,
            cache_dir=settings.cache_dir,
        )
    return _build_vllm(settings)


def _build_vllm(settings: Settings) -> Engine:
    """`vllm serve` with the flags `unimodel plan` computes for this machine's GPUs, then supervised."""
    import logging
    import shutil
    import socket

    from unimodel.engines.vllm import VllmEngine, merge_args
    from unimodel.plan.planner import detect_gpus, make_plan

    if shutil.which("vllm") is None:
        raise ConfigError("--engine vllm needs vLLM: pip install 'unimodel[vllm]' (or use --engine upstream "
                          "in front of a vLLM you run yourself)")
    gpu, gpus = settings.vllm_gpu, settings.vllm_gpus
    if gpu is None:
        found = detect_gpus()
        if found is None:
            raise ConfigError("no known NVIDIA GPU found with nvidia-smi; say which with --vllm-gpu KEY "
                              "and --vllm-gpus N (see `unimodel plan --help`)")
        gpu, gpus = found[0].key, gpus or found[1]
    model = settings.model or "mistral-small-4"
    served = settings.served_model_name or model
    port = settings.vllm_port
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
    try:
        plan = make_plan(model, gpu, gpus or 1, settings.vllm_weights, settings.vllm_kv_cache,
                         settings.max_model_len, served_model_name=served, port=port)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if not plan.sizing.fits:
        logging.getLogger("unimodel.vllm").warning("the plan says this does not fit: %s", plan.sizing.reason)
    argv = merge_args(plan.vllm, settings.vllm_args)
    return VllmEngine(argv, port=port, served_model_name=served, family=settings.model_family,
                      parse_mode=settings.upstream_parse)


def upstream_engine(settings: Settings, url: str, *, served_model_name: Optional[str] = None,
                    upstream_model: Optional[str] = None, api_key: Optional[str] = None) -> UpstreamEngine:
    """An upstream engine at ``url`` with the server's upstream settings (the primary, and the resilience
    stage's fallbacks and canary); ``api_key`` overrides ``--upstream-api-key``."""
    return UpstreamEngine(
        url,
        served_model_name=served_model_name,
        upstream_model=upstream_model,
        family=settings.model_family,
        families=dict(settings.model_families),
        parse_mode=settings.upstream_parse,
        api_key=api_key if api_key is not None else settings.upstream_api_key,
        connect_timeout_s=settings.upstream_connect_timeout_s,
        read_timeout_s=settings.upstream_read_timeout_s,
        max_connections=settings.upstream_max_connections,
    )
