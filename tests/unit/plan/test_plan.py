"""Plan figures checked against hand arithmetic from the configs (written out in each test)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from unimodel.plan.builtin import MISTRAL_SMALL_4
from unimodel.plan.catalog import find_gpu
from unimodel.plan.planner import make_plan
from unimodel.plan.sizing import QUANT_BYTES, RESERVE_BYTES, kv_bytes_per_token, size
from unimodel.plan.specs import SpecError, load_spec

T = MISTRAL_SMALL_4["text_config"]


def test_mistral_small_4_parameters_from_its_config() -> None:
    h, layers, heads, vocab = 4096, 36, 32, 131072
    attention = layers * (
        4096 * 1024                    # q_a_proj: hidden -> q_lora_rank
        + 1024 * heads * (64 + 64)     # q_b_proj: q_lora -> heads x (nope + rope)
        + 4096 * (256 + 64)            # kv_a_proj_with_mqa: hidden -> kv_lora + rope
        + 256 * heads * (64 + 128)     # kv_b_proj: kv_lora -> heads x (nope + v)
        + heads * 128 * 4096           # o_proj
    )
    expert = 3 * h * 2048              # gate, up, down of one expert
    moe = layers * (128 * expert + 1 * expert + h * 128)  # routed + shared + router
    norms = layers * (2 * h + 1024 + 256) + h
    embeddings = 2 * vocab * h         # untied input embeddings and lm_head
    vision = 24 * (4 * 1024**2 + 3 * 1024 * 4096 + 2 * 1024) + 3 * 14 * 14 * 1024 + 1024
    projector = 4 * 1024 * 1024 + 1024 + 1024 * 4096 + 4096 * 4096
    spec = load_spec("mistral-small-4")
    assert spec.total_params == attention + moe + norms + embeddings + vision + projector
    assert 118.5e9 < spec.total_params < 120e9  # published: 119B
    active = attention + layers * (4 * expert + expert + h * 128) + norms + embeddings
    assert spec.active_params == active
    assert 6.0e9 < spec.active_params < 7.0e9  # published: ~6.5B active (with embeddings)


def test_mla_kv_per_token_is_replicated_across_tensor_parallel_ranks() -> None:
    spec = load_spec("mistral-small-4")
    bf16 = (256 + 64) * 36 * 2  # (kv_lora_rank + qk_rope_head_dim) x layers x 2 bytes = 23,040
    assert bf16 == 23_040
    for tp in (1, 2, 4, 8):
        assert kv_bytes_per_token(spec, "bf16", tp) == bf16  # not divided by tp
        assert kv_bytes_per_token(spec, "fp8", tp) == bf16 // 2


def test_gqa_kv_per_token_is_split_across_ranks() -> None:
    spec = load_spec("mistral-small-3.2-24b")  # 40 layers, 8 KV heads of 128
    full = 2 * 8 * 128 * 40 * 2  # K and V x heads x head_dim x layers x bf16 = 163,840
    assert kv_bytes_per_token(spec, "bf16", 1) == full
    assert kv_bytes_per_token(spec, "bf16", 2) == full // 2
    assert kv_bytes_per_token(spec, "bf16", 8) == full // 8
    assert kv_bytes_per_token(spec, "bf16", 16) == 2 * 1 * 128 * 40 * 2  # a head cannot be split further


def test_h200x2_fp8_256k_figures() -> None:
    spec = load_spec("mistral-small-4")
    gpu = find_gpu("h200")
    s = size(spec, gpu, 2, "fp8", "auto", 262144)
    quantized = sum(p.params for p in spec.parts if p.quantized)
    kept = spec.total_params - quantized  # embeddings, lm_head, norms, router, vision, projector in BF16
    assert s.weights_bytes == int(quantized * QUANT_BYTES["fp8"] + kept * 2)
    replicated = sum(p.params * (QUANT_BYTES["fp8"] if p.quantized else 2) for p in spec.parts if not p.split)
    split = sum(p.params * (QUANT_BYTES["fp8"] if p.quantized else 2) for p in spec.parts if p.split)
    assert s.weights_bytes_per_gpu == int(split / 2 + replicated)
    pool = int(141e9 * 0.9) - s.weights_bytes_per_gpu - RESERVE_BYTES
    assert s.kv_pool_bytes_per_gpu == pool
    assert s.kv_cache_tokens == pool // 23_040
    assert s.max_concurrent_sequences == pool // 23_040 // 262_144
    assert s.fits and s.max_concurrent_sequences >= 1
    assert s.hourly_usd == pytest.approx(2 * 3.96) and s.monthly_usd == pytest.approx(2 * 3.96 * 730)


def test_bf16_small_4_does_not_fit_one_h100() -> None:
    s = size(load_spec("mistral-small-4"), find_gpu("h100"), 1, "bf16", "auto", 32768)
    assert not s.fits and "GB per GPU" in (s.reason or "")


def test_nvfp4_needs_blackwell() -> None:
    assert not make_plan(gpu="h200", gpus=2, weights="nvfp4").sizing.fits
    plan = make_plan(gpu="b200", gpus=1, weights="nvfp4", max_model_len=131072)
    assert plan.sizing.fits and plan.vllm[2].endswith("-NVFP4")


def test_launch_commands() -> None:
    plan = make_plan(gpu="h200", gpus=2, weights="fp8", kv_cache="fp8", max_model_len=262144)
    v = plan.vllm
    for flag, value in (("--tokenizer-mode", "mistral"), ("--config-format", "mistral"),
                        ("--load-format", "mistral"), ("--tensor-parallel-size", "2"),
                        ("--max-model-len", "262144"), ("--kv-cache-dtype", "fp8"),
                        ("--reasoning-parser", "mistral"), ("--tool-call-parser", "mistral"),
                        ("--attention-backend", "FLASHMLA")):
        assert v[v.index(flag) + 1] == value
    assert "--enable-auto-tool-choice" in v and v[:3] == ["vllm", "serve", "mistralai/Mistral-Small-4-119B-2603"]
    assert plan.sglang[plan.sglang.index("--tp") + 1] == "2"


def test_compare_four_prices_each_server_by_the_same_method() -> None:
    plan = make_plan(gpu="h100", gpus=4, weights="fp8", max_model_len=32768, compare_four=True)
    d = plan.to_dict()["compare_four"]
    assert [s["role"] for s in d["servers"]] == ["instruct", "reasoning", "vision", "code"]
    assert all(s["fits"] for s in d["servers"])
    assert d["four_monthly_usd"] == pytest.approx(sum(s["monthly_usd"] for s in d["servers"]), abs=0.05)
    assert d["monthly_savings_usd"] == pytest.approx(d["four_monthly_usd"] - d["one_monthly_usd"], abs=0.05)


def _plan_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "unimodel.cli", "plan", *args], capture_output=True,
                          text=True, timeout=60)


def test_cli_json_carries_the_figures() -> None:
    proc = _plan_cli("--gpu", "h200", "--gpus", "2", "--weights", "fp8", "--max-model-len", "262144", "--json")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    for path in ("model.total_params", "model.active_params", "memory.weights_bytes",
                 "memory.kv_bytes_per_token", "memory.kv_cache_tokens", "memory.max_concurrent_sequences",
                 "cost.hourly_usd", "cost.monthly_usd", "launch.vllm"):
        node = d
        for key in path.split("."):
            node = node[key]
        assert node not in (None, "")
    assert d["fits"] is True and d["launch"]["vllm"].startswith("vllm serve")
    table = _plan_cli("--gpu", "h200", "--gpus", "2", "--weights", "fp8", "--max-model-len", "262144")
    assert table.returncode == 0 and "tokens in cache" in table.stdout and "vllm serve" in table.stdout


@pytest.mark.parametrize("args,fragment", [
    (["--gpu", "tpu-v9"], "unknown GPU"),
    (["--gpus", "0"], "--gpus"),
    (["--max-model-len", "-5"], "--max-model-len"),
    (["--weights", "fp2"], "--weights"),
    (["--model", "/no/such/checkpoint"], "not a built-in model"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args: list[str], fragment: str) -> None:
    proc = _plan_cli(*args)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and fragment in lines[0], proc.stderr


def test_a_config_that_is_not_a_decoder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "hidden_size": 768,
                                                      "num_hidden_layers": 12, "num_attention_heads": 12,
                                                      "vocab_size": 30522}))
    with pytest.raises(SpecError, match="not a decoder"):
        load_spec(str(tmp_path))
    proc = _plan_cli("--model", str(tmp_path))
    assert proc.returncode == 2 and "not a decoder" in proc.stderr
