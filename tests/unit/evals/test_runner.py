"""The runner against an in-memory endpoint (``httpx.MockTransport``): what it sends, how it folds a stream,
what it measures, and how it records failures."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from unimodel.evals.runner import EvalConfig, run, send
from unimodel.evals.tasks import build_suites, generate

SUITES = build_suites(["math", "tools"])
TASKS = generate(SUITES, 2, seed=0)
CONFIG = EvalConfig(url="http://endpoint.test/v1", model="m", efforts=("none", "high"), max_tokens=99,
                    api_key="sk-test", retries=1)


def sse(*chunks: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def delta(**fields: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": fields, "finish_reason": None}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 12,
                                  "completion_tokens_details": {"reasoning_tokens": 5}}}


def answering(body: dict[str, Any]) -> bytes:
    task = next(t for t in TASKS if t.messages == body["messages"])
    if task.suite == "tools":
        call = task.reference.tool_calls[0]
        half = len(call.arguments) // 2
        return sse(delta(role="assistant"), delta(reasoning="Which tool? "),
                   delta(tool_calls=[{"index": 0, "id": "c1", "type": "function",
                                      "function": {"name": call.name, "arguments": ""}}]),
                   delta(tool_calls=[{"index": 0, "function": {"arguments": call.arguments[:half]}}]),
                   delta(tool_calls=[{"index": 0, "function": {"arguments": call.arguments[half:]}}]),
                   {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}, USAGE)
    answer = task.expected if body.get("reasoning_effort") == "high" else task.expected + 1
    return sse(delta(role="assistant", content=""), delta(reasoning_content="Adding up. ", reasoning="Adding up. "),
               delta(content="Answer: "), delta(content=str(answer)),
               {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}, USAGE)


def test_every_task_under_every_effort_folded_and_checked() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=answering(json.loads(request.content)),
                              headers={"content-type": "text/event-stream"})

    results = asyncio.run(run(TASKS, SUITES, CONFIG, transport=httpx.MockTransport(handler)))
    assert [(r.effort, r.task_id) for r in results] == [(e, t.id) for e in CONFIG.efforts for t in TASKS]
    body = json.loads(seen[0].content)
    assert seen[0].url == "http://endpoint.test/v1/chat/completions"
    assert seen[0].headers["authorization"] == "Bearer sk-test"
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("m", 99, 0.0)
    assert {json.loads(r.content)["reasoning_effort"] for r in seen} == {"none", "high"}
    tools_body = next(json.loads(r.content) for r in seen if "tools" in json.loads(r.content))
    assert tools_body["tool_choice"] == "auto"
    verdicts = {(r.effort, r.suite): r.correct for r in results}
    assert verdicts == {("none", "math"): False, ("high", "math"): True, ("none", "tools"): True,
                        ("high", "tools"): True}
    for r in results:
        assert (r.prompt_tokens, r.completion_tokens, r.reasoning_tokens, r.answer_tokens) == (9, 12, 5, 7)
        assert r.error is None and r.ttft_s is not None and r.latency_s is not None and r.ttft_s <= r.latency_s
        assert r.finish_reason == ("tool_calls" if r.suite == "tools" else "stop")


def test_reasoning_sent_in_both_fields_is_taken_once() -> None:
    async def go() -> str:
        transport = httpx.MockTransport(lambda request: httpx.Response(200, content=answering(
            json.loads(request.content))))
        async with httpx.AsyncClient(transport=transport) as client:
            measured = await send(client, CONFIG, {"messages": TASKS[0].messages, "reasoning_effort": "high"})
        return measured.reply.reasoning

    assert asyncio.run(go()) == "Adding up. "


def test_failures_are_kept_with_their_error_and_scored_unsolved() -> None:
    calls: dict[str, int] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        key = f"{body['messages'][0]['content'][:20]}|{body.get('reasoning_effort')}"
        calls[key] = calls.get(key, 0) + 1
        task = next(t for t in TASKS if t.messages == body["messages"])
        if task.id == "math-000" and body["reasoning_effort"] == "none":  # busy once, then fine
            if calls[key] == 1:
                return httpx.Response(503, json={"error": {"message": "busy"}}, headers={"retry-after": "0"})
            return httpx.Response(200, content=answering(body))
        if task.id == "math-001":
            return httpx.Response(400, json={"error": {"message": "context too long"}})
        if task.id == "tools-000":
            return httpx.Response(200, content=sse(delta(content="Answer"), {"error": {"message": "engine died"}}))
        return httpx.Response(200, content=b"data: " + json.dumps(delta(content="Answer: 1")).encode()
                              + b"\n\ndata: [DONE]\n\n")  # no usage at all

    results = asyncio.run(run(TASKS, SUITES, CONFIG, transport=httpx.MockTransport(handler)))
    by = {(r.effort, r.task_id): r for r in results}
    retried = by[("none", "math-000")]
    assert retried.error is None and retried.completion_tokens == 12
    assert by[("high", "math-001")].error == "HTTP 400: context too long"
    assert by[("high", "math-001")].error_type == "HTTP 400"  # no code or type in the body
    assert not by[("high", "math-001")].correct and by[("high", "math-001")].ttft_s is None
    assert by[("none", "tools-000")].error == "error frame: engine died"
    assert by[("none", "tools-000")].error_type == "error frame"
    unreported = by[("none", "tools-001")]
    assert unreported.error is None and unreported.completion_tokens is None and unreported.answer_tokens is None
    assert unreported.detail == "no tool call"
