"""``unimodel plan``: parse flags, make the plan, print it (rich table, or ``--json``). Nothing else.

``register(app)`` adds the command to a typer app (the CLI's, or a test's). Bad input (an unknown GPU, zero
GPUs, a negative length, a config that is not a decoder, ...) ends with one line on stderr and exit code 2.
A plan that does not fit is printed (why it does not, no launch command) and exits 1, ``--json`` included.

The printed ``vllm serve`` command is for a separate GPU host: it listens on every interface
(``--host 0.0.0.0``) on port 8001, so it does not clash with the gateway's 8000 when both run on one box,
and the plan says how to point unimodel at it. ``--vllm-command`` changes what starts vLLM (the model goes
where that command takes it). ``--gpu cpu`` prints the command of vLLM's CPU build instead (``plan/cpu.py``):
nothing sized, no GPU flags, its environment in front, ``python -m vllm.entrypoints.openai.api_server``
unless ``--vllm-command`` says otherwise (the CPU wheel's ``vllm`` script does not start).

``--nodes N --layout replicas|dp-ep|tp-pp`` prints the per-node commands of a deployment over N nodes of
``--gpus`` GPUs each and the gateway's pool config for them (``plan/multinode.py``); ``--nodes 1`` (the
default) is the one-node plan. Every planned vLLM command carries ``--shutdown-timeout`` (``--shutdown-timeout
S``, 30 s by default): on SIGTERM vLLM lets its in-flight requests finish for that long.
"""

from __future__ import annotations

import json
import shlex
from typing import NoReturn, Optional

import typer

from unimodel.plan.cpu import DEFAULT_CPU_KV_GIB, CpuPlan, is_cpu, make_cpu_plan
from unimodel.plan.launch import (
    DEFAULT_SHUTDOWN_TIMEOUT_S, DEFAULT_VLLM_COMMAND, REMOTE_HOST, REMOTE_SGLANG_PORT, REMOTE_VLLM_PORT,
    VLLM_MODULE_COMMAND,
)
from unimodel.plan.multinode import LAYOUTS, MultiNodePlan, make_multinode_plan
from unimodel.plan.planner import make_plan
from unimodel.plan.report import Plan, render

ERROR_PREFIX = "unimodel: error: "


def _fail(message: str) -> NoReturn:
    typer.echo(ERROR_PREFIX + " ".join(message.split()), err=True)
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    @app.command()
    def plan(
        model: str = typer.Option("mistral-small-4", help="Built-in name, checkpoint dir or config.json, or hub id."),
        gpu: str = typer.Option("h200", help="h100 | h100-nvl | h200 | b200 | a100-80g | l40s | rtx-4090 | ... | "
                                             "cpu (vLLM's CPU build: its command, nothing sized)"),
        gpus: int = typer.Option(2, help="GPUs (tensor-parallel size)."),
        weights: str = typer.Option("fp8", help="bf16 | fp8 | nvfp4 | int4"),
        kv_cache: str = typer.Option("auto", help="auto (= the model's BF16) | bf16 | fp8"),
        max_model_len: Optional[int] = typer.Option(
            None, help="Context length to plan for (default: the model's, at most 262144; 4096 with --gpu cpu)."),
        gpu_memory_utilization: Optional[float] = typer.Option(
            None, help="Share of CUDA's GPU memory vLLM may use (default: vLLM's recipe's, 0.8 for "
                       "mistral-small-4; else vLLM's 0.9)."),
        reserve_gb: Optional[float] = typer.Option(
            None, help="Non-KV memory per GPU, in GB: activations, non-torch memory, CUDA graphs (an estimate; "
                       "default 10, for a MoE + vision model)."),
        max_num_seqs: Optional[int] = typer.Option(
            None, help="vLLM's --max-num-seqs (default: the recipe's, 128 for mistral-small-4; else vLLM's)."),
        attention_backend: Optional[str] = typer.Option(
            None, help="Pin vLLM's --attention-backend (default: vLLM chooses, as its recipe now does)."),
        port: int = typer.Option(REMOTE_VLLM_PORT, help="Port of the printed vllm serve command (the gateway "
                                                        "keeps 8000)."),
        concurrency: Optional[int] = typer.Option(
            None, help="Sequences in the decode-speed bound (default: the full-length ones that fit)."),
        price_per_gpu_hour: Optional[float] = typer.Option(None, help="USD per GPU-hour (default: the catalog's)."),
        vllm_command: Optional[str] = typer.Option(
            None, help="What starts vLLM, split like a shell would; the model and flags follow (default: "
                       "vllm serve; with --gpu cpu, python -m vllm.entrypoints.openai.api_server)."),
        cpu_kv_gib: int = typer.Option(DEFAULT_CPU_KV_GIB, help="With --gpu cpu: the KV cache in GiB "
                                                                "(VLLM_CPU_KVCACHE_SPACE)."),
        compare_four: bool = typer.Option(False, "--compare-four",
                                          help="Also price four single-purpose servers sized the same way."),
        nodes: int = typer.Option(1, help="Nodes of --gpus GPUs each (1: the one-node plan)."),
        layout: str = typer.Option("replicas", help=f"With --nodes 2 or more: {' | '.join(LAYOUTS)} (independent "
                                                    "servers; one data+expert-parallel engine; tensor x pipeline "
                                                    "parallel over Ray)."),
        node_address: Optional[list[str]] = typer.Option(
            None, help="A node's address, in node order (repeatable); the others stay NODEk_ADDR placeholders."),
        shutdown_timeout: int = typer.Option(
            DEFAULT_SHUTDOWN_TIMEOUT_S, help="vLLM's --shutdown-timeout: seconds in-flight requests get to finish "
                                             "on SIGTERM (0: vLLM aborts them)."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Size the hardware from the model's config.json, price it, and print the vLLM/SGLang command (with
        --gpu cpu: the command of vLLM's CPU build, nothing sized)."""
        if not 1 <= port <= 65535:
            _fail(f"--port must be in 1..65535, not {port}")
        command = _command(vllm_command, VLLM_MODULE_COMMAND if is_cpu(gpu) else DEFAULT_VLLM_COMMAND)
        result: Plan | CpuPlan | MultiNodePlan
        if nodes != 1 or layout != "replicas" or node_address:
            if is_cpu(gpu):
                _fail("--nodes, --layout and --node-address do not apply to --gpu cpu (one CPU host)")
            if compare_four:
                _fail("--compare-four prices one node; leave out --nodes, --layout and --node-address")
            try:
                result = make_multinode_plan(
                    nodes, layout, tuple(node_address or ()), model=model, gpu=gpu, gpus=gpus, weights=weights,
                    kv_cache=kv_cache, max_model_len=max_model_len, utilization=gpu_memory_utilization,
                    concurrency=concurrency, price_per_gpu_hour=price_per_gpu_hour, port=port, host=REMOTE_HOST,
                    sglang_port=REMOTE_SGLANG_PORT, reserve_bytes=None if reserve_gb is None else int(reserve_gb * 1e9),
                    max_num_seqs=max_num_seqs, attention_backend=attention_backend, vllm_command=command,
                    shutdown_timeout=shutdown_timeout)
            except ValueError as exc:  # SpecError included
                _fail(str(exc))
        elif is_cpu(gpu):
            for flag, value in (("--gpu-memory-utilization", gpu_memory_utilization), ("--reserve-gb", reserve_gb),
                                ("--attention-backend", attention_backend), ("--concurrency", concurrency),
                                ("--price-per-gpu-hour", price_per_gpu_hour),
                                ("--compare-four", compare_four or None),
                                ("--kv-cache", None if kv_cache == "auto" else kv_cache)):
                if value is not None:
                    _fail(f"{flag} does not apply to --gpu cpu (vLLM's CPU build: nothing is sized)")
            try:
                result = make_cpu_plan(model, max_model_len=max_model_len, kv_gib=cpu_kv_gib, host=REMOTE_HOST,
                                       port=port, command=command, max_num_seqs=max_num_seqs,
                                       shutdown_timeout=shutdown_timeout)
            except ValueError as exc:
                _fail(str(exc))
        else:
            result = _gpu_plan(model, gpu, gpus, weights, kv_cache, max_model_len, gpu_memory_utilization,
                               concurrency, price_per_gpu_hour, compare_four, port, reserve_gb, max_num_seqs,
                               attention_backend, command, shutdown_timeout)
        if as_json:
            typer.echo(json.dumps(result.to_dict(), indent=2))
        else:
            render(result)
        if not result.fits:
            raise typer.Exit(1)


def _command(given: Optional[str], default: tuple[str, ...]) -> tuple[str, ...]:
    if given is None:
        return default
    try:
        words = shlex.split(given)
    except ValueError as exc:
        _fail(f"--vllm-command is not a shell-style command ({exc})")
    if not words:
        _fail("--vllm-command is empty")
    return tuple(words)


def _gpu_plan(model: str, gpu: str, gpus: int, weights: str, kv_cache: str, max_model_len: Optional[int],
              gpu_memory_utilization: Optional[float], concurrency: Optional[int],
              price_per_gpu_hour: Optional[float], compare_four: bool, port: int, reserve_gb: Optional[float],
              max_num_seqs: Optional[int], attention_backend: Optional[str], command: tuple[str, ...],
              shutdown_timeout: int) -> Plan:
    try:
        return make_plan(model, gpu, gpus, weights, kv_cache, max_model_len,  # type: ignore[arg-type]
                         utilization=gpu_memory_utilization, concurrency=concurrency,
                         price_per_gpu_hour=price_per_gpu_hour, compare_four=compare_four,
                         port=port, host=REMOTE_HOST, sglang_port=REMOTE_SGLANG_PORT,
                         reserve_bytes=None if reserve_gb is None else int(reserve_gb * 1e9),
                         max_num_seqs=max_num_seqs, attention_backend=attention_backend, vllm_command=command,
                         shutdown_timeout=shutdown_timeout)
    except ValueError as exc:  # SpecError included
        _fail(str(exc))

