"""Every flag ``unimodel plan`` emits, for every GPU profile and layout, is accepted by vLLM's own argument
parser (it runs without a GPU), and the CPU command ``--engine vllm --vllm-gpu cpu`` launches too."""

from __future__ import annotations

import itertools
import json
import subprocess
from typing import Any

import pytest

from tests.support.vllm_server import require_vllm
from unimodel.plan.builtin import BUILTIN
from unimodel.plan.catalog import CATALOG
from unimodel.plan.planner import make_plan

pytestmark = [pytest.mark.vllm]

#: parses each argv (after the command words) with vLLM's serve parser: unknown flags and refused values come back
_CHECK = r"""
import json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser
out = []
for argv in json.load(sys.stdin):
    parser = make_arg_parser(FlexibleArgumentParser())
    try:
        args, unknown = parser.parse_known_args(argv)
        validate_parsed_serve_args(args)
        out.append({"unknown": unknown, "error": None, "model": args.model,
                    "model_tag": getattr(args, "model_tag", None)})
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
    assert result["model"] == str(scripted_checkpoint)  # --model, not the positional the module ignores
