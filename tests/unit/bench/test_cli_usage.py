"""``unimodel bench``'s usage errors: one line on stderr and exit code 2, before any request is sent."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from unimodel.bench.cli import register


def bench(*args: str) -> tuple[int, str]:
    app = typer.Typer()

    @app.callback()
    def _root() -> None: ...

    register(app)
    result = CliRunner().invoke(app, ["bench", "--url", "http://127.0.0.1:9/v1", "--model", "m", *args])
    return result.exit_code, result.stderr


@pytest.mark.parametrize("args, message", [
    (["--timeout", "-1"], "--timeout must be positive"),
    (["--timeout", "0"], "--timeout must be positive"),
    (["--timeout", "nan"], "--timeout must be positive"),
    (["--input-tokens", "-5"], "--input-tokens must be positive"),
    (["--output-tokens", "0"], "--output-tokens must be positive"),
    (["--max-tokens", "-1"], "--max-tokens must be positive"),
])
def test_sizes_and_timeouts_must_be_positive(tmp_path: Path, args: list[str], message: str) -> None:
    code, err = bench("--out", str(tmp_path / "out"), *args)
    assert code == 2 and err.startswith("unimodel: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # refused before the run


def test_a_workload_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_bytes('{"messages": [{"role": "user", "content": "café"}]}\n'.encode("latin-1"))
    code, err = bench("--out", str(tmp_path / "out"), "--workload", str(path))
    assert code == 2 and "requests.jsonl:1: not UTF-8 text" in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args, message", [
    (["--workload", "reasoning", "--input-tokens", "64"],
     "--input-tokens sets the chat prompts' length; the reasoning workload sends its own prompts"),
    (["--workload", "tools", "--input-tokens", "64"], "the tools workload sends its own prompts"),
    (["--output-tokens", "64", "--max-tokens", "64"], "both set max_tokens: give one of them"),
])
def test_a_size_flag_the_workload_cannot_honour_is_refused(tmp_path: Path, args: list[str], message: str) -> None:
    code, err = bench("--out", str(tmp_path / "out"), *args)
    assert code == 2 and err.startswith("unimodel: error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_file_refuses_output_tokens(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    code, err = bench("--out", str(tmp_path / "out"), "--workload", str(path), "--output-tokens", "8")
    assert code == 2 and "use --max-tokens to override them" in err and len(err.strip().splitlines()) == 1


def test_help_says_what_each_workload_does_with_the_size_flags_and_the_preflight() -> None:
    app = typer.Typer()

    @app.callback()
    def _root() -> None: ...

    register(app)
    result = CliRunner().invoke(app, ["bench", "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "reasoning, vision, tools and a FILE.jsonl send their own prompts and refuse it" in text
    assert "(defaults: chat 128, reasoning 2048, vision 64, tools 256)" in text
    assert "--no-preflight" in text and "stops the bench with the reason in one line" in text
