"""What the report says a workload sends is read from the requests it built, not from the flags."""

from __future__ import annotations

import json
from pathlib import Path

from unimodel.bench.client import RequestRecord
from unimodel.bench.shape import describe, estimate_tokens, workload_shape
from unimodel.bench.workloads import WorkloadOptions, build_workload


def test_the_estimate_counts_words_and_punctuation() -> None:
    assert estimate_tokens("How many r's are in strawberry?") == 9  # How many r ' s are in strawberry ?
    assert estimate_tokens("") == 0


def test_chat_is_about_the_asked_length() -> None:
    [shape] = workload_shape(build_workload("chat", WorkloadOptions(input_tokens=300, output_tokens=50)))
    assert shape.kind == "chat" and shape.distinct == 64 and 290 <= shape.prompt_tokens <= 310
    assert (shape.max_tokens_min, shape.max_tokens_max, shape.images, shape.tools) == (50, 50, 0, 0)


def test_reasoning_says_its_own_prompts_and_2048_tokens() -> None:
    [shape] = workload_shape(build_workload("reasoning"))
    assert shape.max_tokens_min == 2048 and shape.prompt_tokens < 40  # short questions, long answers
    assert describe(shape) == f"16 distinct prompts of ~{shape.prompt_tokens} tokens, max_tokens 2048"


def test_a_mix_has_one_line_per_kind_and_the_servers_count_beside_the_estimate() -> None:
    records = [RequestRecord(index=i, kind="reasoning", effort=None, start=0.0, end=1.0, prompt_tokens=n)
               for i, n in enumerate((30, 34))]
    records.append(RequestRecord(index=2, kind="reasoning", effort=None, start=0.0, end=1.0, prompt_tokens=999,
                                 error="http_503"))  # a failed request's count is not the prompt's
    shapes = {s.kind: s for s in workload_shape(build_workload("mixed"), records)}
    assert list(shapes) == ["chat", "reasoning", "vision", "tools"]
    assert {k: s.distinct for k, s in shapes.items()} == {"chat": 64, "reasoning": 16, "vision": 12, "tools": 8}
    assert shapes["reasoning"].prompt_tokens_reported == 32.0 and shapes["chat"].prompt_tokens_reported is None
    assert shapes["vision"].images == 1 and "+ 1 image" in describe(shapes["vision"])
    assert shapes["tools"].tools == 4 and "with the 4 tools offered" in describe(shapes["tools"])
    assert "(the server counted 32)" in describe(shapes["reasoning"])


def test_a_file_without_max_tokens_says_the_server_decides(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": c}]}) for c in ("a b", "c"))
                    + "\n")
    [shape] = workload_shape(build_workload(str(path)))
    assert shape.kind == "file" and shape.distinct == 2 and shape.max_tokens_min is None
    assert "no max_tokens (the server's default)" in describe(shape)
