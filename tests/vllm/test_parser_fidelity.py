"""vLLM judges our parsers: the same requests to vLLM alone (its Mistral parsers on) and through unimodel in
every ``--upstream-parse`` mode, in front of that vLLM and of a stock one (no parsers: our parser alone).

tiny-scripted makes real vLLM emit real ``[THINK]…[/THINK]``, ``[TOOL_CALLS]…[ARGS]…``, parallel calls, text
after a call and characters split across byte tokens. Reasoning, content, tool calls, finish reasons and
usage must match vLLM's own answer, streamed and whole; each difference that remains is named in
``EXPECTED`` with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import httpx
import pytest

from tests.support.live_server import LiveServer
from tests.support.vllm_server import SERVED_NAME, VllmServers
from unimodel.compose import build_engine
from unimodel.config import Settings
from unimodel.models.scripted import SCRIPTS, script

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

TOOLS = [{"type": "function", "function": {"name": name, "description": f"{name} of a place",
                                           "parameters": {"type": "object",
                                                          "properties": {"city": {"type": "string"}}}}}
         for name in ("get_weather", "get_time", "lookup")]
#: (front name, parse mode, which vLLM it is in front of); "local" is our embedded engine on the same checkpoint
FRONTS = [("upstream>parsed", "upstream", "parsed"), ("auto>parsed", "auto", "parsed"),
          ("gateway>parsed", "gateway", "parsed"), ("gateway>raw", "gateway", "raw"), ("auto>raw", "auto", "raw"),
          ("local", "", "")]


@dataclass(frozen=True)
class Answer:
    reasoning: str
    content: str
    calls: tuple[tuple[str, str], ...]
    finish: Optional[str]
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int


@pytest.fixture(scope="module")
def fronts(vllm_servers: VllmServers, scripted_checkpoint: Path) -> Iterator[dict[str, str]]:
    """unimodel (the upstream engine) in front of each vLLM, one server per parse mode; and our embedded engine
    on the same files, served under vLLM's name."""
    servers: list[LiveServer] = []
    urls: dict[str, str] = {}
    try:
        for name, mode, which in FRONTS:
            if name == "local":
                settings = Settings(engine="local", model=str(scripted_checkpoint), served_model_name=SERVED_NAME,
                                    device="cpu", dtype="float32", max_num_seqs=4)
            else:
                upstream = getattr(vllm_servers, which).base_url
                settings = Settings(engine="upstream", upstream=upstream, upstream_parse=mode)
            server = LiveServer(settings, build_engine(settings))
            server.__enter__()
            servers.append(server)
            urls[name] = server.base_url
        urls["vllm"] = vllm_servers.parsed.base_url
        urls["vllm-raw"] = vllm_servers.raw.base_url
        yield urls
    finally:
        for server in servers:
            server.__exit__(None, None, None)


def body_for(name: str, **extra: Any) -> dict[str, Any]:
    return {"model": SERVED_NAME, "messages": [{"role": "user", "content": script(name).prompt}],
            "temperature": 0, "max_tokens": 64, "tools": TOOLS, **extra}


def whole(base_url: str, body: dict[str, Any]) -> tuple[Answer, dict[str, Any]]:
    resp = httpx.post(base_url + "/chat/completions", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    data = resp.json()
    (choice,) = data["choices"]
    msg = choice["message"]
    calls = tuple((c["function"]["name"], c["function"]["arguments"]) for c in msg.get("tool_calls") or [])
    usage = data["usage"]
    return Answer(msg.get("reasoning") or msg.get("reasoning_content") or "", msg.get("content") or "", calls,
                  choice["finish_reason"], usage["prompt_tokens"], usage["completion_tokens"],
                  _reasoning_tokens(usage)), data


def streamed(base_url: str, body: dict[str, Any]) -> tuple[Answer, list[dict[str, Any]]]:
    frames: list[dict[str, Any]] = []
    with httpx.stream("POST", base_url + "/chat/completions", timeout=120,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                frames.append(json.loads(line[6:]))
    reasoning, content, finish, usage = "", "", None, None
    calls: dict[int, list[str]] = {}
    for frame in frames:
        usage = frame.get("usage") or usage
        for choice in frame["choices"]:
            delta = choice["delta"]
            reasoning += delta.get("reasoning") or delta.get("reasoning_content") or ""
            content += delta.get("content") or ""
            for tc in delta.get("tool_calls") or []:
                call = calls.setdefault(tc["index"], ["", ""])
                call[0] += (tc.get("function") or {}).get("name") or ""
                call[1] += (tc.get("function") or {}).get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    assert usage is not None
    return Answer(reasoning, content, tuple((n, a) for n, a in (calls[i] for i in sorted(calls))), finish,
                  usage["prompt_tokens"], usage["completion_tokens"], _reasoning_tokens(usage)), frames


def _reasoning_tokens(usage: dict[str, Any]) -> int:
    return int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)


def answer(base_url: str, body: dict[str, Any], stream: bool) -> Answer:
    return streamed(base_url, body)[0] if stream else whole(base_url, body)[0]


def expected_difference(front: str, name: str, variant: str, stream: bool) -> Optional[tuple[str, str]]:
    """A difference from vLLM's own answer that stays: (the field, why), or None."""
    raw = front.endswith(">raw")
    unconstrained = raw or front == "local"  # no tool grammar for tool_choice auto (ours asks for none either)
    if unconstrained and name == "after_call" and variant == "default":
        # vLLM's Mistral tool parser constrains decoding with mistral_common's grammar (after a call only another
        # call or the end), so with its parsers on the model never writes the " Done, see above" it writes
        # unconstrained. A stock vLLM lets it; vLLM and our parser both drop text after a call, but it is counted.
        return "completion_tokens", "vLLM's tool grammar stops the model after the call; a stock vLLM does not"
    if unconstrained and name == "tool" and variant == "cut" and not stream:
        # a call cut by max_tokens: vLLM's whole answer says "tool_calls" (its stream says "length"); our parser
        # says "length" both ways: the arguments are cut JSON, and a client must not run the call
        return "finish", "vLLM's whole answer calls a cut call finished; ours says length, as vLLM's stream does"
    if raw and not stream and name in ("think", "think_tool", "long_think") and variant != "high":
        # a stock vLLM reports no reasoning tokens, and a whole answer has no frames to count (one token a frame
        # when streamed, counted exactly): we estimate 4 characters a token. A request that asks to think
        # (reasoning_effort) is streamed from the upstream, so it is counted exactly
        return "reasoning_tokens", "estimated from the text in a whole answer from a stock vLLM"
    return None


VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "cut": {"max_tokens": 7},  # plain: cut right after a character split across two byte tokens; tool: mid-call
    "stop": {"stop": [" table"]},  # plain: a stop string at the end of the answer
    "high": {"reasoning_effort": "high"},  # the model is told to think ([MODEL_SETTINGS]); streamed upstream
}


def _cases() -> list[tuple[str, str]]:
    cases = [(s.name, "default") for s in SCRIPTS]
    cases += [("plain", "cut"), ("plain", "stop"), ("tool", "cut"), ("think", "cut"), ("think", "high"),
              ("think_tool", "high"), ("long_think", "high")]
    return cases


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("name,variant", _cases())
def test_every_parse_mode_answers_as_vllm_does(fronts: dict[str, str], name: str, variant: str,
                                               stream: bool) -> None:
    body = body_for(name, **VARIANTS[variant])
    reference = answer(fronts["vllm"], body, stream)
    if variant == "default":
        expected = script(name)
        assert reference.finish in ("stop", "tool_calls"), reference  # the script really ran on vLLM
        assert expected.text.split("[")[0] in reference.content or reference.calls or reference.reasoning
    for front, _, _ in FRONTS:
        got = answer(fronts[front], body, stream)
        differs = expected_difference(front, name, variant, stream)
        if differs is not None:
            field, _why = differs
            got = _with(got, field, getattr(reference, field))
        assert got == reference, f"{front}: {got} != vLLM's {reference}"


def _with(a: Answer, field: str, value: Any) -> Answer:
    return Answer(**{**a.__dict__, field: value})


def test_the_scripts_run_on_vllm(fronts: dict[str, str]) -> None:
    """What vLLM itself makes of each script (the fixture's ground truth is a real model run, not a constant)."""
    plain = answer(fronts["vllm"], body_for("plain"), stream=False)
    assert plain.content == "Hello! Grüße 띧 café — the table is set" and plain.finish == "stop"
    think = answer(fronts["vllm"], body_for("think"), stream=True)
    assert (think.reasoning, think.content) == ("Let me think about it.", "Sunny and mild today")
    parallel = answer(fronts["vllm"], body_for("parallel"), stream=False)
    assert parallel.calls == (("get_weather", '{"city": "Paris"}'), ("get_time", '{"tz": "UTC"}'))
    assert parallel.finish == "tool_calls"


def test_greedy_plain_chat_equals_vllm_through_every_mode(fronts: dict[str, str]) -> None:
    """Multi-byte characters split across byte tokens survive every mode (they came out as U+FFFD when raw
    output was asked for with skip_special_tokens=false), and so does the end of an answer."""
    body = body_for("plain", tools=None)
    body.pop("tools")
    reference, _ = whole(fronts["vllm"], body)
    for front, _, _ in FRONTS:
        for stream in (False, True):
            got = answer(fronts[front], body, stream)
            assert got.content == reference.content == "Hello! Grüße 띧 café — the table is set", front
            assert "\ufffd" not in got.content


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_thinking_budget_cuts_real_vllm_thinking_in_every_mode(fronts: dict[str, str], stream: bool) -> None:
    """Our thinking budget (vLLM 0.32 ignores its own ``thinking_token_budget`` without a reasoning config): the
    thinking is cut after 4 tokens ("ap", "ple", " ban", "ana"), the model is told the thinking ended, and the
    script goes on to its answer."""
    body = body_for("long_think", thinking_budget=4, reasoning_effort="high")
    body.pop("tools")
    for front, _, _ in FRONTS:
        got = answer(fronts[front], body, stream)
        assert (got.reasoning, got.content, got.finish) == ("apple banana", "Finally an answer", "stop"), front
        assert got.reasoning_tokens == 4, front


def test_chunk_shapes_follow_vllm_s(fronts: dict[str, str]) -> None:
    """What a client relies on in vLLM's frames holds in ours: one id and model, a first frame with the
    assistant role, one finish, and a last frame with ``choices: []`` and the usage. (The differences are ours
    to have: vLLM's own fields — token_ids, stop_reason, prompt_token_ids, kv_transfer_params … — are not relayed;
    a finish comes in a frame of its own; a call's name and its first arguments come in two frames.)"""
    body = body_for("parallel")
    for base in (fronts["vllm"], fronts["auto>parsed"], fronts["gateway>raw"]):
        _, frames = streamed(base, body)
        assert len({f["id"] for f in frames}) == 1 and {f["model"] for f in frames} == {SERVED_NAME}
        assert {f["object"] for f in frames} == {"chat.completion.chunk"}
        assert frames[0]["choices"][0]["delta"]["role"] == "assistant"
        finishes = [c["finish_reason"] for f in frames for c in f["choices"] if c.get("finish_reason")]
        assert finishes == ["tool_calls"], base
        assert frames[-1]["choices"] == [] and frames[-1]["usage"]["completion_tokens"] > 0
        starts = [tc for f in frames for c in f["choices"] for tc in c["delta"].get("tool_calls") or [] if "id" in tc]
        assert [tc["function"]["name"] for tc in starts] == ["get_weather", "get_time"]
        assert all(tc["type"] == "function" and tc["id"] for tc in starts)
