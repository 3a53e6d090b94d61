"""``unimodel plan`` through typer: the table, ``--json``, ``--compare-four``, a plan that does not fit
(exit 1), and bad input (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

from tests.support.plan_cli import run_plan

DONE_WHEN = ["--gpu", "h200", "--gpus", "2", "--weights", "fp8", "--max-model-len", "262144"]


def run(app: typer.Typer, *args: str) -> tuple[int, str, str]:
    return run_plan(app, *args, columns=200)


def test_json_carries_the_figures(app: typer.Typer) -> None:
    code, out, _ = run(app, *DONE_WHEN, "--json")
    assert code == 0
    d = json.loads(out)
    assert d["model"]["total_params"] == 119_401_298_944
    assert d["model"]["active_params"] == 6_632_588_288
    assert d["memory"]["kv_bytes_per_token"] == (256 + 64) * 36 * 2 and d["memory"]["kv_replicated_per_gpu"]
    # the full-length figure is reported; the launch runs up to the recipe's 128 sequences at once
    assert d["memory"]["max_concurrent_sequences"] == d["memory"]["kv_cache_tokens"] // 262_144 == 8
    assert d["scheduling"] == {"max_num_seqs": 128, "max_num_seqs_in_command": 128,
                               "max_num_seqs_source": "vLLM's recipe for Mistral Small 4",
                               "full_length_sequences": 8}
    assert d["memory"]["gpu_memory_utilization"] == 0.8 and d["hardware"]["cuda_total_gib"] == 139.81
    assert d["memory"]["reserve_bytes_per_gpu"] == 10_000_000_000 and d["memory"]["reserve_is_estimate"]
    assert 120e9 < d["memory"]["weights_bytes"] < 122e9
    assert d["fits"] is True and d["reason"] is None
    assert d["cost"]["hourly_usd"] == 7.92 and d["cost"]["monthly_usd"] == pytest.approx(7.92 * 730)
    launch = d["launch"]
    assert launch["vllm"].startswith("vllm serve mistralai/Mistral-Small-4-119B-2603 ")
    assert "--max-model-len 262144" in launch["vllm"] and "--attention-backend" not in launch["vllm"]
    # for a separate GPU host: every interface, a port that leaves 8000 to the gateway; and where to point it
    assert launch["vllm"].endswith("--host 0.0.0.0 --port 8001") and (launch["host"], launch["port"]) == (
        "0.0.0.0", 8001)
    assert launch["unimodel"] == ("unimodel serve --engine upstream --upstream http://GPU_HOST:8001/v1 "
                                  "--model mistral-small-4")


def test_table_prints_the_same_figures(app: typer.Typer) -> None:
    code, out, _ = run(app, *DONE_WHEN)
    _, raw, _ = run(app, *DONE_WHEN, "--json")
    d = json.loads(raw)
    assert code == 0
    assert f"{d['memory']['kv_cache_tokens']:,}" in out and "tokens in cache" in out
    assert "concurrent 262,144-token sequences" in out
    assert f"{d['memory']['kv_bytes_per_token']:,} bytes" in out
    assert f"{d['memory']['weights_bytes'] / 1e9:,.1f} GB" in out
    assert f"${d['cost']['monthly_usd']:,.0f}/month" in out
    assert d["launch"]["vllm"] in out.replace("\n", " ") or d["launch"]["vllm"] in out
    assert d["launch"]["unimodel"] in out and "an estimate" in out and "139.81 GiB" in out


def test_a_plan_that_does_not_fit_exits_1_without_a_command_or_a_speed(app: typer.Typer) -> None:
    code, out, _ = run(app, "--gpu", "h100", "--gpus", "1", "--weights", "bf16", "--json")
    d = json.loads(out)
    assert code == 1 and d["fits"] is False and "GB per GPU" in d["reason"]
    assert d["launch"] is None and d["speed"] is None
    code, table, _ = run(app, "--gpu", "h100", "--gpus", "1", "--weights", "bf16")
    assert code == 1 and "does not fit" in table and "No launch command" in table
    assert "vllm serve" not in table and "tok/s" not in table and "unimodel serve" not in table


def test_compare_four(app: typer.Typer) -> None:
    code, out, _ = run(app, "--gpu", "h100", "--gpus", "4", "--max-model-len", "32768", "--compare-four", "--json")
    d = json.loads(out)["compare_four"]
    assert code == 0
    assert [s["role"] for s in d["servers"]] == ["instruct", "reasoning", "vision", "code"]
    assert all(s["fits"] for s in d["servers"])
    # each is sized for the same context and a quarter of the one model's full-length sequences
    one = d["one"]
    assert one["max_model_len"] == 32_768 and d["target_sequences_each"] == -(-one["max_concurrent_sequences"] // 4)
    for s in d["servers"]:
        assert s["max_model_len"] == 32_768 and s["max_concurrent_sequences"] >= s["target_sequences"]
        assert s["equal_capacity"] and s["shortfalls"] == []
        assert s["gpu_memory_utilization"] == 0.9  # vLLM's default: these models have no recipe
    assert d["four_max_concurrent_sequences"] >= one["max_concurrent_sequences"]
    assert d["four_monthly_usd"] == pytest.approx(sum(s["monthly_usd"] for s in d["servers"]), abs=0.05)
    assert d["monthly_savings_usd"] == pytest.approx(d["four_monthly_usd"] - d["one_monthly_usd"], abs=0.05)
    code, table, _ = run(app, "--gpu", "h100", "--gpus", "4", "--max-model-len", "32768", "--compare-four")
    assert code == 0 and "four single-purpose servers" in table and "qwen2.5-vl-32b" in table
    assert "a quarter (rounded up)" in table and "Not equal" not in table


def test_compare_four_says_where_capacity_is_not_equal(app: typer.Typer) -> None:
    code, out, _ = run(app, *DONE_WHEN, "--compare-four", "--json")
    d = json.loads(out)["compare_four"]
    code_server = next(s for s in d["servers"] if s["role"] == "code")
    assert code == 0 and code_server["max_model_len"] == 32_768 and not code_server["equal_capacity"]
    assert "context 32,768 (its model's maximum) against 262,144" in code_server["shortfalls"]
    _, table, _ = run(app, *DONE_WHEN, "--compare-four")
    assert "Not equal: code (qwen2.5-coder-32b): context 32,768" in table


def test_flags_for_the_launch(app: typer.Typer) -> None:
    code, out, _ = run(app, *DONE_WHEN, "--max-num-seqs", "64", "--attention-backend", "TRITON_MLA",
                       "--reserve-gb", "6", "--gpu-memory-utilization", "0.9", "--port", "9000", "--json")
    d = json.loads(out)
    assert code == 0 and d["memory"]["reserve_bytes_per_gpu"] == 6_000_000_000
    argv = d["launch"]["vllm_argv"]
    f = dict(zip(argv, argv[1:]))
    assert (f["--max-num-seqs"], f["--attention-backend"], f["--port"]) == ("64", "TRITON_MLA", "9000")
    assert f["--gpu-memory-utilization"] == "0.9" and d["scheduling"]["max_num_seqs_source"] == "--max-num-seqs"


def test_max_model_len_beyond_256k_warns(app: typer.Typer) -> None:
    code, out, _ = run(app, "--max-model-len", "524288", "--kv-cache", "fp8", "--json")
    d = json.loads(out)
    assert code == 0 and any("Mistral serves Small 4 at" in n for n in d["notes"])


def test_price_override(app: typer.Typer) -> None:
    _, out, _ = run(app, "--gpu", "h200", "--price-per-gpu-hour", "2.5", "--json")
    assert json.loads(out)["cost"]["monthly_usd"] == 2 * 2.5 * 730


def _not_a_decoder(tmp_path: Path) -> str:
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["BertModel"], "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "vocab_size": 30522}))
    return str(tmp_path)


@pytest.mark.parametrize("args,fragment", [
    (["--gpu", "tpu-v9"], "unknown GPU 'tpu-v9'"),
    (["--gpus", "0"], "--gpus must be at least 1"),
    (["--gpus", "-2"], "--gpus must be at least 1"),
    (["--max-model-len", "-5"], "--max-model-len must be a positive number"),
    (["--max-model-len", "0"], "--max-model-len must be a positive number"),
    (["--weights", "fp2"], "--weights must be one of"),
    (["--kv-cache", "int8"], "--kv-cache must be one of"),
    (["--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization must be in (0, 1]"),
    (["--concurrency", "0"], "--concurrency must be at least 1"),
    (["--max-num-seqs", "0"], "--max-num-seqs must be at least 1"),
    (["--reserve-gb", "-1"], "--reserve-gb cannot be negative"),
    (["--port", "0"], "--port must be in 1..65535"),
    (["--price-per-gpu-hour", "-1"], "cannot be negative"),
    (["--model", "/no/such/checkpoint"], "not a built-in model"),
    (["--model", "someone/not-cached"], "the hub is not reachable"),
    (["--model", "NOT_A_DECODER"], "not a decoder language model"),
])
def test_bad_input_is_one_line_and_exit_2(app: typer.Typer, tmp_path: Path, args: list[str], fragment: str) -> None:
    args = [_not_a_decoder(tmp_path) if a == "NOT_A_DECODER" else a for a in args]
    code, out, err = run(app, *args)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("unimodel: error: ") and fragment in lines[0], err
    assert out == ""
