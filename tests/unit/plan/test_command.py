"""``unimodel plan`` through typer: the table, ``--json``, ``--compare-four``, and bad input (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from unimodel.plan.command import register

DONE_WHEN = ["--gpu", "h200", "--gpus", "2", "--weights", "fp8", "--max-model-len", "262144"]


@pytest.fixture()
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:  # a second command, so `plan` is a subcommand as in the real CLI
        """Unused."""

    return app


def run(app: typer.Typer, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["plan", *args], env={"COLUMNS": "200", "HF_HUB_OFFLINE": "1"})
    return result.exit_code, result.stdout, result.stderr


def test_json_carries_the_figures(app: typer.Typer) -> None:
    code, out, _ = run(app, *DONE_WHEN, "--json")
    assert code == 0
    d = json.loads(out)
    assert d["model"]["total_params"] == 119_401_298_944
    assert d["model"]["active_params"] == 6_632_588_288
    assert d["memory"]["kv_bytes_per_token"] == (256 + 64) * 36 * 2 and d["memory"]["kv_replicated_per_gpu"]
    assert d["memory"]["max_concurrent_sequences"] == d["memory"]["kv_cache_tokens"] // 262_144 == 11
    assert 120e9 < d["memory"]["weights_bytes"] < 122e9
    assert d["fits"] is True and d["reason"] is None
    assert d["cost"]["hourly_usd"] == 7.92 and d["cost"]["monthly_usd"] == pytest.approx(7.92 * 730)
    assert d["launch"]["vllm"].startswith("vllm serve mistralai/Mistral-Small-4-119B-2603 ")
    assert "--max-model-len 262144" in d["launch"]["vllm"]


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


def test_bf16_on_one_h100_reports_not_fitting(app: typer.Typer) -> None:
    code, out, _ = run(app, "--gpu", "h100", "--gpus", "1", "--weights", "bf16", "--json")
    d = json.loads(out)
    assert code == 0 and d["fits"] is False and "GB per GPU" in d["reason"]


def test_compare_four(app: typer.Typer) -> None:
    code, out, _ = run(app, "--gpu", "h100", "--gpus", "4", "--max-model-len", "32768", "--compare-four", "--json")
    d = json.loads(out)["compare_four"]
    assert code == 0
    assert [s["role"] for s in d["servers"]] == ["instruct", "reasoning", "vision", "code"]
    assert all(s["fits"] for s in d["servers"])
    assert d["four_monthly_usd"] == pytest.approx(sum(s["monthly_usd"] for s in d["servers"]), abs=0.05)
    assert d["monthly_savings_usd"] == pytest.approx(d["four_monthly_usd"] - d["one_monthly_usd"], abs=0.05)
    code, table, _ = run(app, "--gpu", "h100", "--gpus", "4", "--max-model-len", "32768", "--compare-four")
    assert code == 0 and "four single-purpose servers" in table and "qwen2.5-vl-32b" in table


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
