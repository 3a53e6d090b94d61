"""``unimodel logs`` as a terminal shows it: 80 and 160 columns, short ids, no wrapped cell, escapes escaped;
``--wide``; ``logs stats`` prices only the hardware the operator named."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rich.cells import cell_len
from typer.testing import CliRunner

from tests.unit.telemetry.conftest import make_row
from unimodel import logs_cli
from unimodel.telemetry.columns import Column, fit
from unimodel.telemetry.listing import id_length
from unimodel.telemetry.store import LogStore

HEX_IDS = [f"{n:x}" * 32 for n in range(10, 15)]  # "aaaa…", "bbbb…": 32 characters each, as the server makes
LONG_ID = "client-supplied-request-identifier-" + "x" * 80 + "-0001"
LONG_MODEL = "mistralai/Mistral-Small-4-119B-2603-Instruct-with-a-very-long-name"
ROUTE = "red\x1b[31m\nx"  # what a printed row must never pass through raw: a colour and a forged line
ERROR = "upstream\x1b[31m_error\nforged"
CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # every control character but the newline ending a line


@pytest.fixture()
def db(tmp_path: Path) -> str:
    """A request log with five ordinary requests and one with a long id, a long model name and control
    characters in its route, key and error, written by the store (a database an older server wrote, before it
    escaped what it stored)."""
    url = f"sqlite:///{tmp_path / 'requests.db'}"
    store = LogStore(url)
    store.migrate()
    rows = [make_row(i, request_id=rid) for i, rid in enumerate(HEX_IDS)]
    rows.append(make_row(10, request_id=LONG_ID, model=LONG_MODEL, route=ROUTE, error_type=ERROR, status=502,
                         key_name="team-\x1b[2Jred", finish_reason=None, latency_ms=123456.0,
                         prompt_tokens=12345, reasoning_tokens=2048, completion_tokens=4096))
    store.insert(rows)
    store.dispose()
    return url


def run(columns: int, *args: str) -> str:
    result = CliRunner().invoke(logs_cli.logs_app, list(args), env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.stderr
    assert not CONTROL.search(result.stdout), result.stdout
    return result.stdout


def body(out: str) -> list[str]:
    """The table's rows: the lines between the rule under the header and the caption."""
    lines = out.splitlines()
    rule = next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"})
    return [line for line in lines[rule + 1:] if re.match(r"\d\d-\d\d \d\d:\d\d:\d\d", line)]


def test_at_80_columns_each_request_is_one_line_with_the_columns_that_matter(db: str) -> None:
    out = run(80, "--db", db)
    lines = out.splitlines()
    assert max(cell_len(line) for line in lines) <= 80
    header = next(line for line in lines if line.startswith("time"))
    assert header.split() == ["time", "id", "route", "status", "tokens", "latency"]
    rows = body(out)
    assert len(rows) == 6  # one line per request: nothing wrapped
    assert rows[0].startswith("05-01 12:00:10") and "client-s…" in rows[0] and "502" in rows[0]
    assert "red\\x1b[31m\\nx" in rows[0]  # the route, escaped and whole
    assert "12345/2048/4096" in rows[0] and "123.5 s" in rows[0]
    for line, rid in zip(rows[1:], reversed(HEX_IDS)):
        assert f"{rid[:8]}…" in line and rid[:9] not in line and "200" in line
    assert "hidden: key, model, error, effort, ttft, finish, upstream" in " ".join(out.split())
    assert "--wide shows all" in out


def test_at_160_columns_more_columns_and_long_values_cut_not_wrapped(db: str) -> None:
    out = run(160, "--db", db)
    assert max(cell_len(line) for line in out.splitlines()) <= 160
    header = next(line for line in out.splitlines() if line.startswith("time"))
    assert {"key", "model", "error", "effort", "ttft"} <= set(header.split())
    rows = body(out)
    assert len(rows) == 6
    assert "mistralai/Mistral-Small" in rows[0] and LONG_MODEL not in out and "…" in rows[0]
    assert "upstream\\x1b[31m" in rows[0] and "team-\\x1b[2" in rows[0]
    assert all("mistral-small-4" in line for line in rows[1:])


def test_wide_shows_every_column_and_the_whole_id(db: str) -> None:
    out = run(400, "--db", db, "--wide")  # a terminal wide enough: one table, every value whole
    rows = body(out) or [line for line in out.splitlines() if line.startswith("2026-05-01")]
    assert len(rows) == 6 and LONG_ID in rows[0] and LONG_MODEL in rows[0]
    assert "upstream\\x1b[31m_error\\nforged" in rows[0] and all(rid in out for rid in HEX_IDS)
    header = next(line for line in out.splitlines() if line.startswith("time"))
    assert header.split() == ["time", "id", "key", "route", "model", "status", "error", "effort", "tokens",
                              "ttft", "latency", "finish", "upstream"]
    out = run(80, "--db", db, "--wide")  # too narrow for that: one block per request, a field per line
    assert max(cell_len(line) for line in out.splitlines()) <= 80
    assert all(rid in out for rid in HEX_IDS)  # 32 characters: whole on their line
    assert LONG_ID in re.sub(r"\s+", "", out)  # folded, every character there
    assert "request_id" in out and "upstream\\x1b[31m_error\\nforged" in out


def test_json_keeps_the_full_values(db: str) -> None:
    out = run(80, "--db", db, "--json", "--limit", "1")
    row = json.loads(out)
    assert row["request_id"] == LONG_ID and row["route"] == ROUTE and row["model"] == LONG_MODEL


def test_stats_without_hardware_prints_no_price_and_says_how(db: str) -> None:
    out = run(80, "stats", "--db", db)
    assert "$" not in out and "Cost estimate" not in out
    assert "no cost estimate: add --gpu h100 --gpus 2, or --price-per-hour USD" in out
    assert max(cell_len(line) for line in out.splitlines()) <= 80
    assert json.loads(run(80, "stats", "--db", db, "--json"))["cost"] is None


def test_stats_prices_the_hardware_named(db: str) -> None:
    out = run(80, "stats", "--db", db, "--gpu", "h100", "--gpus", "2")
    assert "Cost estimate" in out and "2 × h100 at $2.54/GPU-hour" in out and "no cost estimate" not in out
    out = run(80, "stats", "--db", db, "--price-per-hour", "0.4")
    assert "$0.40/hour" in out
    cost = json.loads(run(80, "stats", "--db", db, "--json", "--price-per-hour", "0.4"))["cost"]
    assert cost["hourly_usd"] == 0.4 and cost["gpu"] is None and cost["gpus"] is None
    out = run(80, "stats", "--db", db, "--price-per-gpu-hour", "2.5", "--gpus", "3")
    assert "3 × GPU at $2.50/GPU-hour" in out


@pytest.mark.parametrize("args,message", [
    (["--gpus", "2"], "--gpus needs --gpu"),
    (["--gpu", "h100", "--price-per-hour", "1"], "--price-per-hour prices the whole machine"),
    (["--gpu", "tpu"], "unknown GPU"),
])
def test_stats_refuses_hardware_it_cannot_price(db: str, args: list[str], message: str) -> None:
    result = CliRunner().invoke(logs_cli.logs_app, ["stats", "--db", db, *args], env={"COLUMNS": "80"})
    assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1


def test_fit_keeps_columns_by_priority_and_gives_spare_width_back() -> None:
    columns = [Column("a", 3), Column("bb", 1), Column("name", 2, cap=6, floor=4)]
    cells = [["xxxxx"], ["yy"], ["zzzzzzzzzz"]]
    assert fit(columns, cells, 100) == [5, 2, 10]  # room for all: each whole
    assert fit(columns, cells, 2 + 3 + 6) == [None, 2, 6]  # "a" left out; "name" at its cap
    assert fit(columns, cells, 2 + 3 + 4) == [None, 2, 4]  # "name" at its floor
    assert fit(columns, cells, 2 + 3 + 8 + 3 + 5) == [5, 2, 8]  # the spare 2 cells go back to "name"
    assert fit(columns, cells, 1) == [None, 2, None]  # the first column stays, whatever the width


def test_ids_are_cut_to_a_prefix_unique_on_the_page() -> None:
    assert id_length(["aaaaaaaaaaaa", "bbbbbbbbbbbb"]) == 8
    assert id_length(["abcdefghij1", "abcdefghij2"]) == 11
    assert id_length(["x" * 100 + "1", "x" * 100 + "2"]) == 24  # at most 24
    assert id_length(["same", "same"]) == 8
