"""The built-in workloads and a user's JSONL: what goes on the wire."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest

from unimodel.bench.workloads import BUILTIN, DEFAULT_MAX_TOKENS, WorkloadError, WorkloadOptions, build_workload


@pytest.mark.parametrize("name", BUILTIN)
def test_every_builtin_streams_with_usage(name: str) -> None:
    workload = build_workload(name)
    assert workload.items
    kind, body = workload.request(0, "my-model", "high")
    assert body["model"] == "my-model" and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["reasoning_effort"] == "high"
    assert body["messages"] and body["max_tokens"] > 0
    assert "reasoning_effort" not in workload.request(0, "m", None)[1]  # no effort: the server's default


def test_requests_cycle_and_do_not_share_state() -> None:
    workload = build_workload("reasoning")
    n = len(workload.items)
    assert workload.request(n + 1, "m", None) == workload.request(1, "m", None)
    _, body = workload.request(0, "m", "high")  # a body's top level is the caller's to change
    body["messages"] = []
    body["max_tokens"] = 1
    body["stream_options"]["continuous_usage_stats"] = True
    _, again = workload.request(0, "m", None)
    assert len(again["messages"]) == 1 and again["max_tokens"] == DEFAULT_MAX_TOKENS["reasoning"]
    assert again["stream_options"] == {"include_usage": True} and "reasoning_effort" not in again
    assert "model" not in workload.items[0].body and "stream" not in workload.items[0].body


def test_chat_prompts_have_the_asked_lengths_and_differ() -> None:
    workload = build_workload("chat", WorkloadOptions(input_tokens=300, output_tokens=50, ignore_eos=True, seed=7))
    prompts = [workload.request(i, "m", None)[1]["messages"][0]["content"] for i in range(len(workload.items))]
    assert len(set(p.split(".")[0] for p in prompts)) == len(prompts)  # every prompt opens differently
    assert all(290 <= len(p.split()) <= 300 for p in prompts)
    _, body = workload.request(0, "m", None)
    assert body["max_tokens"] == 50 and body["ignore_eos"] is True
    again = build_workload("chat", WorkloadOptions(input_tokens=300, output_tokens=50, seed=7))
    assert again.request(5, "m", None)[1]["messages"] == workload.request(5, "m", None)[1]["messages"]


def test_vision_sends_real_png_pictures() -> None:
    from PIL import Image

    _, body = build_workload("vision", WorkloadOptions(image_size=64)).request(0, "m", None)
    parts = body["messages"][0]["content"]
    url = next(p["image_url"]["url"] for p in parts if p["type"] == "image_url")
    assert url.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert image.format == "PNG" and image.size == (64, 64)
    assert len(image.getcolors(maxcolors=1 << 16) or []) > 1  # a shape on a background


def test_tools_offer_tools_and_mixed_interleaves_every_kind() -> None:
    _, body = build_workload("tools").request(0, "m", None)
    assert body["tool_choice"] == "auto" and {t["function"]["name"] for t in body["tools"]} >= {"get_weather"}
    kinds = [build_workload("mixed").request(i, "m", None)[0] for i in range(4)]
    assert kinds == ["chat", "reasoning", "vision", "tools"]


def test_max_tokens_overrides_every_kind() -> None:
    for name in BUILTIN:
        assert build_workload(name, WorkloadOptions(max_tokens=17)).request(0, "m", None)[1]["max_tokens"] == 17


def test_a_jsonl_of_requests(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    lines = [{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "model": "ignored", "stream": False},
             {"messages": [{"role": "user", "content": "yo"}], "reasoning_effort": "low",
              "stream_options": {"continuous_usage_stats": True}}]
    path.write_text("# a comment\n" + "\n".join(json.dumps(x) for x in lines) + "\n\n")
    workload = build_workload(str(path))
    assert len(workload.items) == 2
    kind, body = workload.request(0, "served", None)
    assert kind == "file" and body["model"] == "served" and body["stream"] is True and body["max_tokens"] == 5
    _, body = workload.request(1, "served", "high")
    assert body["reasoning_effort"] == "high"  # the run's effort wins over the line's
    assert body["stream_options"] == {"continuous_usage_stats": True, "include_usage": True}
    assert workload.request(1, "served", None)[1]["reasoning_effort"] == "low"


@pytest.mark.parametrize("content, message", [
    ('{"messages": []}\n', "requests.jsonl:1: a chat request needs"),
    ('{"messages": [{"role": "user", "content": "a"}]}\nnot json\n', "requests.jsonl:2: not JSON"),
    ("\n# nothing\n", "no requests"),
    ('{"messages": [{"role": "user", "content": "a"}], "stream_options": true}\n',
     "requests.jsonl:1: 'stream_options' must be an object"),
])
def test_bad_jsonl_says_where(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text(content)
    with pytest.raises(WorkloadError, match=message):
        build_workload(str(path))


def test_a_jsonl_that_is_not_utf8_says_where(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    good = '{"messages": [{"role": "user", "content": "a"}]}\n'
    path.write_bytes(good.encode() + '{"messages": [{"role": "user", "content": "café"}]}\n'.encode("latin-1"))
    with pytest.raises(WorkloadError, match="requests.jsonl:2: not UTF-8 text"):
        build_workload(str(path))


def test_unknown_workload() -> None:
    with pytest.raises(WorkloadError, match="unknown workload 'poems'"):
        build_workload("poems")
    with pytest.raises(WorkloadError, match="cannot read"):
        build_workload("/nonexistent/x.jsonl")


# ---- the size flags: applied or refused, never ignored --------------------------------------------------------

def test_output_tokens_is_every_builtin_kinds_max_tokens() -> None:
    for name in BUILTIN:
        workload = build_workload(name, WorkloadOptions(output_tokens=40, ignore_eos=True))
        for i in range(len(workload.items)):
            _, body = workload.request(i, "m", None)
            assert body["max_tokens"] == 40 and body["ignore_eos"] is True
    defaults = {kind: build_workload(kind).request(0, "m", None)[1]["max_tokens"] for kind in DEFAULT_MAX_TOKENS}
    assert defaults == {"chat": 128, "reasoning": 2048, "vision": 64, "tools": 256}


def test_input_tokens_sizes_the_chat_prompts_of_chat_and_mixed() -> None:
    mixed = build_workload("mixed", WorkloadOptions(input_tokens=40))
    chat = [body for kind, body in (mixed.request(i, "m", None) for i in range(8)) if kind == "chat"]
    assert chat and all(30 <= len(b["messages"][0]["content"].split()) <= 40 for b in chat)


@pytest.mark.parametrize("name", ["reasoning", "vision", "tools"])
def test_input_tokens_is_refused_where_the_prompts_are_the_workloads_own(name: str) -> None:
    with pytest.raises(WorkloadError, match=f"--input-tokens .* the {name} workload sends its own prompts"):
        build_workload(name, WorkloadOptions(input_tokens=64))


def test_a_file_refuses_the_size_flags_but_takes_max_tokens_and_ignore_eos(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
                                "max_completion_tokens": 5}) + "\n")
    with pytest.raises(WorkloadError, match="--input-tokens .* file .*requests.jsonl"):
        build_workload(str(path), WorkloadOptions(input_tokens=10))
    with pytest.raises(WorkloadError, match="--output-tokens: the requests of file .* use --max-tokens"):
        build_workload(str(path), WorkloadOptions(output_tokens=10))
    _, body = build_workload(str(path), WorkloadOptions(max_tokens=9, ignore_eos=True)).request(0, "m", None)
    assert (body["max_tokens"], body["max_completion_tokens"], body["ignore_eos"]) == (9, 9, True)
    assert build_workload(str(path)).request(0, "m", None)[1]["max_tokens"] == 5  # untouched without the flag


def test_output_tokens_and_max_tokens_together_are_refused() -> None:
    with pytest.raises(WorkloadError, match="give one of them"):
        build_workload("chat", WorkloadOptions(output_tokens=10, max_tokens=20))
