"""The vLLM and SGLang commands a plan prints (and the supervisor runs)."""

from __future__ import annotations

import shlex

import pytest

from unimodel.plan.planner import make_plan, vllm_command


def flags(argv: list[str]) -> dict[str, str]:
    return dict(zip(argv, argv[1:]))


def test_vllm_command_for_h200x2_fp8_256k() -> None:
    plan = make_plan(gpu="h200", gpus=2, weights="fp8", max_model_len=262_144)
    argv = vllm_command(plan)
    assert argv[:3] == ["vllm", "serve", "mistralai/Mistral-Small-4-119B-2603"]
    f = flags(argv)
    for flag, value in (("--tokenizer-mode", "mistral"), ("--config-format", "mistral"),
                        ("--load-format", "mistral"), ("--tensor-parallel-size", "2"),
                        ("--max-model-len", "262144"), ("--kv-cache-dtype", "auto"),
                        ("--reasoning-parser", "mistral"), ("--tool-call-parser", "mistral"),
                        ("--attention-backend", "FLASH_ATTN_MLA"),  # the model card's, Hopper + BF16 KV
                        ("--gpu-memory-utilization", "0.9"), ("--max-num-seqs", "11")):
        assert f[flag] == value, flag
    assert "--enable-auto-tool-choice" in argv
    assert "--quantization" not in argv  # the FP8 checkpoint says so itself
    assert argv.count("--max-model-len") == 1
    argv.append("--x")  # a copy: the plan is unchanged
    assert plan.vllm[-1] != "--x"


@pytest.mark.parametrize("gpu,kv,backend", [
    ("h200", "auto", "FLASH_ATTN_MLA"),
    ("h200", "fp8", "TRITON_MLA"),   # FlashAttention-MLA has no FP8 KV cache
    ("b200", "auto", "TRITON_MLA"),  # FlashAttention-MLA is Hopper-only
    ("a100-80g", "auto", "TRITON_MLA"),
])
def test_mla_attention_backend(gpu: str, kv: str, backend: str) -> None:
    plan = make_plan(gpu=gpu, gpus=2, weights="fp8", kv_cache=kv, max_model_len=65_536)  # type: ignore[arg-type]
    assert flags(plan.vllm)["--attention-backend"] == backend
    assert flags(plan.vllm)["--kv-cache-dtype"] == ("fp8" if kv == "fp8" else "auto")


def test_nvfp4_names_its_checkpoint_and_bf16_says_none_is_published() -> None:
    nv = make_plan(gpu="b200", gpus=1, weights="nvfp4", max_model_len=131_072)
    assert nv.sizing.fits and nv.vllm[2] == "mistralai/Mistral-Small-4-119B-2603-NVFP4"
    bf16 = make_plan(gpu="h200", gpus=4, weights="bf16", max_model_len=131_072)
    assert bf16.vllm[2] == "mistralai/Mistral-Small-4-119B-2603"
    assert any("FP8 and NVFP4 only" in n for n in bf16.notes)


def test_gqa_model_gets_online_fp8_and_no_mla_backend() -> None:
    plan = make_plan("mistral-small-3.2-24b", gpu="h100", gpus=1, weights="fp8", max_model_len=32_768)
    f = flags(plan.vllm)
    assert plan.vllm[2] == "mistralai/Mistral-Small-3.2-24B-Instruct-2506"
    assert f["--quantization"] == "fp8" and "--attention-backend" not in f
    assert f["--tool-call-parser"] == "mistral" and "--reasoning-parser" not in f  # Small 3.2 does not think
    llama = make_plan("llama-3.3-70b", gpu="h200", gpus=1, weights="fp8", max_model_len=32_768)
    assert "--tokenizer-mode" not in llama.vllm and "--tool-call-parser" not in llama.vllm


def test_sglang_equivalent() -> None:
    plan = make_plan(gpu="h200", gpus=2, weights="fp8", kv_cache="fp8", max_model_len=262_144)
    f = flags(plan.sglang)
    assert plan.sglang[:3] == ["python", "-m", "sglang.launch_server"]
    assert f["--model-path"] == "mistralai/Mistral-Small-4-119B-2603" and f["--tp"] == "2"
    assert f["--context-length"] == "262144" and f["--kv-cache-dtype"] == "fp8_e4m3"
    assert f["--reasoning-parser"] == "mistral" and f["--tool-call-parser"] == "mistral"
    assert shlex.split(plan.to_dict()["launch"]["sglang"]) == plan.sglang


def test_served_name_and_port_for_the_supervisor() -> None:
    plan = make_plan(gpu="h200", gpus=2, served_model_name="small", port=8123)
    f = flags(plan.vllm)
    assert (f["--served-model-name"], f["--port"], f["--host"]) == ("small", "8123", "127.0.0.1")
    assert f["--max-model-len"] == "262144"  # default: the model's 1M positions capped at the served 256K
