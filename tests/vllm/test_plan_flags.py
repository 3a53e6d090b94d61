"""Every flag ``unimodel plan`` emits, for every GPU profile and layout, is accepted by vLLM's own argument
parser (it runs without a GPU), and the CPU command ``--engine vllm --vllm-gpu cpu`` launches too. So is every
per-node command of every multi-node layout (``--nodes N --layout replicas|dp-ep|tp-pp``), and the values vLLM
reads from them agree: data-parallel sizes add up, ranks follow one another (vLLM's own ``ParallelConfig``
accepts each node's), tensor x pipeline = the GPUs, and every command drains on SIGTERM."""

from __future__ import annotations

import itertools
import json
import subprocess
from typing import Any

import pytest

from tests.support.vllm_server import require_vllm
from unimodel.plan.builtin import BUILTIN
from unimodel.plan.catalog import CATALOG
from unimodel.plan.multinode import make_multinode_plan
from unimodel.plan.planner import make_plan

pytestmark = [pytest.mark.vllm]

#: parses each argv (after the command words) with vLLM's serve parser: unknown flags and refused values come back
_CHECK = r"""
import json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser
VALUES = ("headless", "data_parallel_size", "data_parallel_size_local", "data_parallel_start_rank",
          "data_parallel_address", "data_parallel_rpc_port", "enable_expert_parallel", "tensor_parallel_size",
          "pipeline_parallel_size", "distributed_executor_backend", "scheduling_policy", "shutdown_timeout")


def parallel(args):  # vLLM's own check of a node's data-parallel ranks (no Ray backend: Ray is not installed)
    if args.data_parallel_size == 1:
        return None
    from vllm.config import ParallelConfig
    try:
        ParallelConfig(tensor_parallel_size=args.tensor_parallel_size,
                       pipeline_parallel_size=args.pipeline_parallel_size,
                       data_parallel_size=args.data_parallel_size,
                       data_parallel_size_local=args.data_parallel_size_local,
                       data_parallel_rank=args.data_parallel_start_rank or 0,
                       data_parallel_master_ip=args.data_parallel_address,
                       data_parallel_rpc_port=args.data_parallel_rpc_port,
                       enable_expert_parallel=args.enable_expert_parallel)
    except Exception as exc:
        return repr(exc)
    return None


out = []
for argv in json.load(sys.stdin):
    parser = make_arg_parser(FlexibleArgumentParser())
    try:
        args, unknown = parser.parse_known_args(argv)
        validate_parsed_serve_args(args)
        out.append({"unknown": unknown, "error": None, "model": args.model,
                    "model_tag": getattr(args, "model_tag", None),
                    "values": {k: getattr(args, k) for k in VALUES}, "parallel_error": parallel(args)})
    except SystemExit as exc:
        out.append({"unknown": [], "error": f"exit {exc.code}", "model": None})
    except Exception as exc:
        out.append({"unknown": [], "error": repr(exc), "model": None})
json.dump(out, sys.stdout)
"""


def _flags(argv: list[str]) -> list[str]:
    """The argv after the command words (``vllm serve`` or ``python -m …``), as vLLM's parser sees them."""
    first = next(i for i, a in enumerate(argv) if a.startswith("--") and i > 0 and argv[i - 1] != "-m")
    head = argv[:first]
    return (head[-1:] if head[:2] == ["vllm", "serve"] else []) + argv[first:]


def _plans() -> list[tuple[str, list[str]]]:
    out: list[tuple[str, list[str]]] = []
    for model, gpu, gpus, weights, kv in itertools.product(
            sorted(BUILTIN), sorted(CATALOG), (1, 2, 4, 8), ("bf16", "fp8", "nvfp4", "int4"), ("auto", "fp8")):
        try:
            plan = make_plan(model, gpu, gpus, weights, kv, port=8001, host="0.0.0.0")  # type: ignore[arg-type]
        except ValueError:
            continue  # a combination the planner refuses (e.g. FP4 on a GPU without it) prints no command
        out.append((f"{model} {gpu}x{gpus} {weights} kv={kv}", list(plan.vllm)))
    # the options a user adds: the attention backends vLLM's recipe for Small 4 pinned, a batch size
    for backend in ("FLASH_ATTN_MLA", "TRITON_MLA"):
        plan = make_plan("mistral-small-4", "h200", 2, "fp8", "fp8", attention_backend=backend, max_num_seqs=64)
        out.append((f"mistral-small-4 --attention-backend {backend}", list(plan.vllm)))
    return out


def _parse(argvs: list[list[str]]) -> list[dict[str, Any]]:
    python = require_vllm()
    proc = subprocess.run([str(python), "-c", _CHECK], input=json.dumps(argvs), capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_every_planned_flag_is_one_vllm_accepts() -> None:
    plans = _plans()
    assert len(plans) > 100
    distinct = {tuple(_flags(argv)): name for name, argv in plans}
    results = _parse([list(a) for a in distinct])
    bad = {name: r for (argv, name), r in zip(distinct.items(), results) if r["unknown"] or r["error"]}
    assert not bad, bad
    for (argv, name), r in zip(distinct.items(), results):
        assert r["model_tag"] == argv[0], (name, r)  # `vllm serve MODEL`: serve copies model_tag into model
        assert r["values"]["shutdown_timeout"] == 30, (name, r)  # in-flight requests finish on SIGTERM


#: (nodes, GPU, GPUs a node, weights) for each multi-node layout: Small 4 as it fits one node, across nodes of
#: 8, and in BF16 on H100s, where one copy does not fit a node (tp-pp's case)
_MULTI = {"replicas": [(2, "h200", 2, "fp8"), (4, "h100", 4, "fp8"), (3, "b200", 1, "nvfp4")],
          "dp-ep": [(2, "h200", 2, "fp8"), (2, "h200", 8, "fp8"), (4, "h100", 4, "fp8"), (3, "b200", 1, "nvfp4")],
          "tp-pp": [(2, "h100", 4, "bf16"), (4, "h100", 2, "bf16"), (3, "h200", 8, "bf16")]}


def _multinode_commands() -> list[tuple[str, int, int, list[str]]]:
    """(plan, nodes, GPUs a node, argv) of every `vllm serve` of every node of every multi-node plan."""
    out = []
    for layout, cases in _MULTI.items():
        for nodes, gpu, gpus, weights in cases:
            p = make_multinode_plan(nodes, layout, ("10.0.0.1",), model="mistral-small-4", gpu=gpu, gpus=gpus,
                                    weights=weights, host="0.0.0.0", port=8001, shutdown_timeout=45)
            name = f"{layout} {nodes}x {gpu}x{gpus} {weights}"
            assert p.fits, (name, p.memory.reason)
            out += [(f"{name} node {n.index}", nodes, gpus, list(c)) for n in p.nodes for c in n.commands
                    if c[0] == "vllm"]
    return out


def test_every_command_of_every_multinode_layout_is_one_vllm_accepts() -> None:
    commands = _multinode_commands()
    results = _parse([_flags(argv) for _, _, _, argv in commands])
    bad = {name: r for (name, *_), r in zip(commands, results) if r["unknown"] or r["error"] or r["parallel_error"]}
    assert not bad, bad
    by_plan: dict[str, list[dict[str, Any]]] = {}
    for (name, nodes, gpus, argv), r in zip(commands, results):
        v = r["values"]
        assert v["shutdown_timeout"] == 45 and v["scheduling_policy"] == "priority", (name, v)
        layout = name.split()[0]
        if layout == "replicas":
            assert v["tensor_parallel_size"] == gpus and v["data_parallel_size"] == 1 and not v["headless"]
        elif layout == "tp-pp":
            assert v["tensor_parallel_size"] * v["pipeline_parallel_size"] == nodes * gpus, (name, v)
            assert (v["pipeline_parallel_size"], v["distributed_executor_backend"]) == (nodes, "ray")
        else:
            assert v["enable_expert_parallel"] and v["tensor_parallel_size"] == 1, (name, v)
            assert v["data_parallel_address"] == "10.0.0.1" and v["data_parallel_rpc_port"] == 13345
        by_plan.setdefault(name.rpartition(" node ")[0], []).append(v)
    for name, values in by_plan.items():
        if name.startswith("dp-ep"):
            size = values[0]["data_parallel_size"]
            assert sum(v["data_parallel_size_local"] for v in values) == size, (name, values)
            assert [v["data_parallel_start_rank"] or 0 for v in values] == [
                sum(w["data_parallel_size_local"] for w in values[:k]) for k in range(len(values))]
            assert [v["headless"] for v in values] == [False] + [True] * (len(values) - 1)
        elif name.startswith("tp-pp"):
            assert len(values) == 1  # one engine, started on the head of the Ray cluster


def test_the_cpu_launch_command_is_one_vllm_accepts(scripted_checkpoint: Any) -> None:
    from unimodel.compose import build_engine
    from unimodel.config import Settings

    python = require_vllm()
    settings = Settings(engine="vllm", model=str(scripted_checkpoint), vllm_gpu="cpu", max_model_len=1024,
                        vllm_command=f"{python} -m vllm.entrypoints.openai.api_server")
    engine = build_engine(settings)
    argv = list(engine.argv)  # type: ignore[attr-defined]
    assert argv[:3] == [str(python), "-m", "vllm.entrypoints.openai.api_server"]
    (result,) = _parse([argv[3:]])
    assert not result["unknown"] and result["error"] is None, result
    assert result["values"]["shutdown_timeout"] == 30  # the supervised vLLM drains on SIGTERM too
    assert result["model"] == str(scripted_checkpoint)  # --model, not the positional the module ignores
