"""vLLM's CPU build in the plan: where the model goes in each vLLM command, the CPU command (no GPU flags,
BF16, a bounded context, its KV cache in its environment), the AVX-512 check on a fake ``/proc/cpuinfo``, and
``unimodel plan --gpu cpu`` / ``--vllm-command``."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import typer

from tests.support.plan_cli import run_plan
from unimodel.plan.cpu import avx512_missing, cpu_flags, make_cpu_plan
from unimodel.plan.launch import VLLM_MODULE_COMMAND, model_args
from unimodel.plan.planner import make_plan

MODULE = "vllm.entrypoints.openai.api_server"
GPU_ONLY = ("--gpu-memory-utilization", "--kv-cache-dtype", "--tensor-parallel-size", "--attention-backend",
            "--quantization")


def flags(argv: list[str]) -> dict[str, str]:
    return dict(zip(argv, argv[1:]))


@pytest.mark.parametrize("command,expected", [
    (("vllm", "serve"), ["vllm", "serve", "M"]),
    (("/opt/vllm/bin/vllm", "serve"), ["/opt/vllm/bin/vllm", "serve", "M"]),
    (("python", "-m", "vllm.entrypoints.cli.main", "serve"), ["python", "-m", "vllm.entrypoints.cli.main", "serve",
                                                              "M"]),
    # the module's parser has a positional model but never reads it: it would serve Qwen/Qwen3-0.6B
    (("python", "-m", MODULE), ["python", "-m", MODULE, "--model", "M"]),
    (("/opt/vllm/bin/python", "-m", MODULE), ["/opt/vllm/bin/python", "-m", MODULE, "--model", "M"]),
])
def test_the_model_goes_where_the_command_takes_it(command: tuple[str, ...], expected: list[str]) -> None:
    assert model_args(command, "M") == expected


def test_a_gpu_plan_honours_the_command() -> None:
    plan = make_plan(gpu="h200", gpus=2, max_model_len=65_536, vllm_command=("/opt/py", "-m", MODULE))
    assert plan.vllm[:5] == ["/opt/py", "-m", MODULE, "--model", "mistralai/Mistral-Small-4-119B-2603"]
    f = flags(plan.vllm)
    assert f["--tensor-parallel-size"] == "2" and f["--gpu-memory-utilization"] == "0.8"
    assert make_plan(gpu="h200", gpus=2).vllm[:3] == ["vllm", "serve", "mistralai/Mistral-Small-4-119B-2603"]


def test_the_cpu_command() -> None:
    plan = make_cpu_plan("/models/m", max_model_len=1024, kv_gib=2, served_model_name="m", port=8123)
    assert plan.vllm == ["python", "-m", MODULE, "--model", "/models/m", "--dtype", "bfloat16",
                         "--max-model-len", "1024", "--enable-prompt-tokens-details", "--shutdown-timeout", "30",
                         "--served-model-name", "m",
                         "--host", "127.0.0.1", "--port", "8123"]
    assert dict(plan.env) == {"VLLM_CPU_KVCACHE_SPACE": "2"}
    assert plan.shell_command == "VLLM_CPU_KVCACHE_SPACE=2 " + shlex.join(plan.vllm)
    assert plan.upstream_url == "http://127.0.0.1:8123/v1"


def test_the_cpu_command_for_a_mistral_model_and_defaults(tmp_path: Path) -> None:
    model = tmp_path / "ministral"
    model.mkdir()
    (model / "params.json").write_text("{}")
    plan = make_cpu_plan(str(model), command=("vllm", "serve"), max_num_seqs=4)
    f = flags(plan.vllm)
    assert plan.vllm[:3] == ["vllm", "serve", str(model)]
    assert (f["--tokenizer-mode"], f["--config-format"], f["--load-format"], f["--tool-call-parser"]) == \
        ("mistral",) * 4
    assert "--enable-auto-tool-choice" in plan.vllm and "--reasoning-parser" not in plan.vllm  # does not think
    assert f["--max-model-len"] == "4096" and f["--max-num-seqs"] == "4" and plan.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert not [g for g in GPU_ONLY if g in plan.vllm]
    assert any("`vllm` script fails at start" in n for n in plan.notes)  # vllm serve on the CPU wheel


@pytest.mark.parametrize("kwargs,fragment", [({"max_model_len": 0}, "--max-model-len"),
                                             ({"kv_gib": 0}, "whole GiB"), ({"max_num_seqs": 0}, "--max-num-seqs")])
def test_bad_cpu_input(kwargs: dict[str, int], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        make_cpu_plan("m", **kwargs)  # type: ignore[arg-type]


def test_cpu_flags_come_from_the_first_processor(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse", "avx2", "avx512f"} and avx512_missing(cpuinfo) is None
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512_bf16\n")  # no avx512f itself
    assert "no AVX-512" in (avx512_missing(cpuinfo) or "")
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd\n")  # Arm: no x86 flags to judge by
    assert cpu_flags(cpuinfo) is None and avx512_missing(cpuinfo) is None
    assert cpu_flags(tmp_path / "absent") is None and avx512_missing(tmp_path / "absent") is None
    cpuinfo.write_text("x\n" * 10_000 + "flags\t: avx2\n")  # the flags come early; the file is not read on
    assert cpu_flags(cpuinfo) is None


def run(app: typer.Typer, *args: str) -> tuple[int, str, str]:
    return run_plan(app, *args, columns=400)


def test_plan_gpu_cpu_prints_what_to_run(app: typer.Typer) -> None:
    code, out, _ = run(app, "--gpu", "cpu", "--model", "/models/m", "--max-model-len", "2048", "--cpu-kv-gib", "4",
                       "--json")
    assert code == 0
    d = json.loads(out)
    launch = d["launch"]
    assert launch["vllm_argv"][:5] == ["python", "-m", MODULE, "--model", "/models/m"]
    assert launch["vllm"].startswith("VLLM_CPU_KVCACHE_SPACE=4 python -m " + MODULE + " --model /models/m")
    assert launch["env"] == {"VLLM_CPU_KVCACHE_SPACE": "4"}
    f = flags(launch["vllm_argv"])
    assert (f["--dtype"], f["--max-model-len"], f["--host"], f["--port"]) == ("bfloat16", "2048", "0.0.0.0", "8001")
    assert not [g for g in GPU_ONLY if g in launch["vllm_argv"]]
    assert launch["upstream_url"] == "http://CPU_HOST:8001/v1" and d["sized"] is False
    assert "--vllm-gpu cpu" in launch["unimodel_supervised"] and "--vllm-cpu-kv-gib 4" in launch["unimodel_supervised"]
    assert any("`vllm` script fails at start" in n for n in d["notes"])
    code, table, _ = run(app, "--gpu", "cpu", "--model", "/models/m")
    assert code == 0 and "VLLM_CPU_KVCACHE_SPACE=1 python -m vllm.entrypoints.openai.api_server --model /models/m" \
        in table


def test_plan_vllm_command(app: typer.Typer) -> None:
    code, out, _ = run(app, "--gpu", "cpu", "--model", "m", "--vllm-command", "/opt/v/bin/python -m " + MODULE,
                       "--json")
    assert code == 0 and json.loads(out)["launch"]["vllm_argv"][:5] == ["/opt/v/bin/python", "-m", MODULE,
                                                                        "--model", "m"]
    code, out, _ = run(app, "--gpu", "h200", "--gpus", "2", "--max-model-len", "65536", "--vllm-command",
                       "'/opt/my vllm/bin/vllm' serve", "--json")
    argv = json.loads(out)["launch"]["vllm_argv"]
    assert code == 0 and argv[:3] == ["/opt/my vllm/bin/vllm", "serve", "mistralai/Mistral-Small-4-119B-2603"]
    assert flags(argv)["--tensor-parallel-size"] == "2"


@pytest.mark.parametrize("args,fragment", [
    (["--gpu", "cpu", "--gpu-memory-utilization", "0.5"], "--gpu-memory-utilization does not apply to --gpu cpu"),
    (["--gpu", "cpu", "--compare-four"], "--compare-four does not apply"),
    (["--gpu", "cpu", "--kv-cache", "fp8"], "--kv-cache does not apply"),
    (["--gpu", "cpu", "--cpu-kv-gib", "0"], "whole GiB"),
    (["--vllm-command", "'unclosed"], "not a shell-style command"),
    (["--vllm-command", " "], "--vllm-command is empty"),
])
def test_plan_bad_cpu_input(app: typer.Typer, args: list[str], fragment: str) -> None:
    code, _, err = run(app, *args)
    assert code == 2 and fragment in err


def test_the_module_command_constant() -> None:
    assert VLLM_MODULE_COMMAND == ("python", "-m", MODULE)
