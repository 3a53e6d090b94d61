"""The vLLM and SGLang commands a plan prints (and the supervisor runs)."""

from __future__ import annotations

import shlex

import pytest

from unimodel.plan.planner import make_plan, vllm_command


def flags(argv: list[str]) -> dict[str, str]:
    return dict(zip(argv, argv[1:]))


def test_vllm_command_for_h200x2_fp8_256k_follows_the_recipe() -> None:
    """vLLM's recipe for Small 4: --max-num-batched-tokens 16384 --max-num-seqs 128
    --gpu-memory-utilization 0.8, and no attention backend (the recipe dropped its pins: vLLM's own choice is
    faster)."""
    plan = make_plan(gpu="h200", gpus=2, weights="fp8", max_model_len=262_144)
    argv = vllm_command(plan)
    assert argv[:3] == ["vllm", "serve", "mistralai/Mistral-Small-4-119B-2603"]
    f = flags(argv)
    for flag, value in (("--tokenizer-mode", "mistral"), ("--config-format", "mistral"),
                        ("--load-format", "mistral"), ("--tensor-parallel-size", "2"),
                        ("--max-model-len", "262144"), ("--kv-cache-dtype", "auto"),
                        ("--reasoning-parser", "mistral"), ("--tool-call-parser", "mistral"),
                        ("--gpu-memory-utilization", "0.8"), ("--max-num-seqs", "128"),
                        ("--max-num-batched-tokens", "16384")):
        assert f[flag] == value, flag
    assert "--enable-auto-tool-choice" in argv
    assert "--attention-backend" not in argv
    assert "--quantization" not in argv  # the FP8 checkpoint says so itself
    assert argv.count("--max-model-len") == 1
    # --max-num-seqs is not the full-length figure: that one is reported, not launched with
    assert plan.sizing.max_concurrent_sequences == 8 and plan.sizing.effective_max_num_seqs == 128
    argv.append("--x")  # a copy: the plan is unchanged
    assert plan.vllm[-1] != "--x"


@pytest.mark.parametrize("gpu,kv", [("h200", "auto"), ("h200", "fp8"), ("b200", "auto"), ("a100-80g", "auto")])
def test_mla_attention_backend_is_left_to_vllm(gpu: str, kv: str) -> None:
    plan = make_plan(gpu=gpu, gpus=2, weights="fp8", kv_cache=kv, max_model_len=65_536)  # type: ignore[arg-type]
    assert "--attention-backend" not in plan.vllm
    assert flags(plan.vllm)["--kv-cache-dtype"] == ("fp8" if kv == "fp8" else "auto")


def test_attention_backend_only_on_request() -> None:
    pinned = make_plan(gpu="h200", gpus=2, max_model_len=65_536, attention_backend="FLASH_ATTN_MLA")
    assert flags(pinned.vllm)["--attention-backend"] == "FLASH_ATTN_MLA" and not pinned.notes
    blackwell = make_plan(gpu="b200", gpus=2, max_model_len=65_536, attention_backend="FLASH_ATTN_MLA")
    assert any("built for Hopper" in n for n in blackwell.notes)
    gqa = make_plan("llama-3.3-70b", gpu="h200", gpus=2, max_model_len=32_768, attention_backend="TRITON_MLA")
    assert any("uses GQA attention" in n for n in gqa.notes)


def test_models_without_a_recipe_keep_vllm_defaults_and_max_num_seqs_is_a_setting() -> None:
    llama = make_plan("llama-3.3-70b", gpu="h200", gpus=2, weights="fp8", max_model_len=32_768)
    f = flags(llama.vllm)
    assert f["--gpu-memory-utilization"] == "0.9"
    assert "--max-num-seqs" not in f and "--max-num-batched-tokens" not in f
    assert llama.sizing.effective_max_num_seqs == 1024  # vLLM's default on a >= 70 GiB GPU
    assert "default" in llama.max_num_seqs_source
    small = make_plan(gpu="h200", gpus=2, max_num_seqs=48, utilization=0.9)
    assert flags(small.vllm)["--max-num-seqs"] == "48" and flags(small.vllm)["--gpu-memory-utilization"] == "0.9"
    assert flags(small.sglang)["--max-running-requests"] == "48"


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
    """`serve --engine vllm` launches the planned command itself: on loopback, on its own port."""
    plan = make_plan(gpu="h200", gpus=2, served_model_name="small", port=8123)
    f = flags(plan.vllm)
    assert (f["--served-model-name"], f["--port"], f["--host"]) == ("small", "8123", "127.0.0.1")
    assert f["--max-model-len"] == "262144"  # default: the model's 1M positions capped at the served 256K
    assert not plan.remote and plan.upstream_url == "http://127.0.0.1:8123/v1"


def test_printed_command_is_for_a_separate_gpu_host() -> None:
    plan = make_plan(gpu="h200", gpus=2, host="0.0.0.0", port=8001)
    f = flags(plan.vllm)
    assert (f["--host"], f["--port"]) == ("0.0.0.0", "8001")
    assert plan.remote and plan.upstream_url == "http://GPU_HOST:8001/v1"
    assert plan.unimodel_command == ["unimodel", "serve", "--engine", "upstream", "--upstream",
                                     "http://GPU_HOST:8001/v1", "--model", "mistral-small-4"]
    assert flags(plan.sglang)["--host"] == "0.0.0.0"


def test_a_context_beyond_256k_warns() -> None:
    plan = make_plan(gpu="h200", gpus=2, weights="fp8", kv_cache="fp8", max_model_len=524_288)
    assert any("beyond the 262,144 tokens (256K) Mistral serves Small 4 at" in n and "1,048,576" in n
               for n in plan.notes)
    assert not any("256K" in n for n in make_plan(gpu="h200", gpus=2, max_model_len=262_144).notes)
