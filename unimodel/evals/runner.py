"""Send every task to the endpoint once per reasoning effort, stream the answers, check them.

One ``httpx.AsyncClient``; at most ``concurrency`` requests in flight; every request streams
(``stream_options.include_usage``), so the first token's time is measured. Measured per request:

- **TTFT**: seconds from sending the request to the first chunk that carries any token (reasoning, answer or a
  tool call); **latency**: to the end of the stream;
- **tokens**: ``usage`` of the last chunk: ``completion_tokens``, and of those
  ``completion_tokens_details.reasoning_tokens`` (0 when the endpoint reports no details); answer tokens are
  the difference. An endpoint that sends no usage leaves them ``None`` (counted, never guessed).

A request that fails (an HTTP error after ``retries`` tries for 429/502/503/504 and connection failures, an
error frame mid-stream, a timeout) is kept with its error and scored as not solved; its ``error_type`` (``HTTP
400 invalid_value``: the status and the OpenAI error body's ``code``; ``error frame``, ``bad stream``,
``timeout``, or the connection error's class) groups failures in the report. Checking runs in worker
threads, at most one per CPU at a time (the code suite starts a sandboxed process per check).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import httpx

from unimodel.evals.tasks.base import Reply, Suite, Task, ToolCall, Verdict, shorten

RETRY_STATUSES = frozenset({429, 502, 503, 504})
DEFAULT_EFFORT = "default"  # as an effort: send no reasoning_effort at all (the endpoint's default)


@dataclass(frozen=True)
class EvalConfig:
    url: str  # the OpenAI base URL, e.g. http://127.0.0.1:8000/v1
    model: str
    efforts: tuple[str, ...]
    max_tokens: int = 4096  # of every effort not in max_tokens_by_effort
    temperature: float = 0.0
    concurrency: int = 8
    timeout_s: float = 600.0
    api_key: Optional[str] = None
    retries: int = 2
    max_tokens_by_effort: dict[str, int] = field(default_factory=dict)

    def tokens_for(self, effort: str) -> int:
        """``max_tokens`` of the requests of ``effort``."""
        return self.max_tokens_by_effort.get(effort, self.max_tokens)


@dataclass
class Measured:
    """One request as the client saw it."""

    reply: Reply = Reply()
    error: Optional[str] = None
    error_type: Optional[str] = None
    status: Optional[int] = None  # the HTTP status of a refused request
    finish_reason: Optional[str] = None
    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None
    reasoning_tokens: Optional[int] = None
    latency_s: Optional[float] = None
    ttft_s: Optional[float] = None


@dataclass(frozen=True)
class TaskResult:
    task_id: str
    suite: str
    effort: str
    correct: bool
    answer: str
    detail: str
    error: Optional[str]
    error_type: Optional[str]
    finish_reason: Optional[str]
    prompt_tokens: Optional[int]
    completion_tokens: Optional[int]
    reasoning_tokens: Optional[int]
    latency_s: Optional[float]
    ttft_s: Optional[float]

    @property
    def answer_tokens(self) -> Optional[int]:
        if self.completion_tokens is None:
            return None
        return self.completion_tokens - (self.reasoning_tokens or 0)


def request_body(task: Task, effort: str, config: EvalConfig) -> dict[str, Any]:
    body: dict[str, Any] = {"model": config.model, "messages": task.messages, "stream": True,
                            "stream_options": {"include_usage": True}, "max_tokens": config.tokens_for(effort),
                            "temperature": config.temperature, **task.request}
    if effort != DEFAULT_EFFORT:
        body["reasoning_effort"] = effort
    return body


class _Stream:
    """Folds the chunks of one streamed chat completion into a :class:`Measured`."""

    def __init__(self, started: float) -> None:
        self.started = started
        self.measured = Measured()
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.calls: dict[int, list[list[str]]] = {}  # index -> [name pieces, argument pieces]

    def feed(self, chunk: dict[str, Any]) -> None:
        if isinstance(chunk.get("error"), dict):
            self.measured.error = "error frame: " + shorten(str(chunk["error"].get("message", "")), 200)
            self.measured.error_type = "error frame"
            return
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            details = usage.get("completion_tokens_details") or {}
            self.measured.prompt_tokens = usage.get("prompt_tokens")
            self.measured.completion_tokens = usage.get("completion_tokens")
            self.measured.reasoning_tokens = details.get("reasoning_tokens") or 0
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            token = False
            for key, sink in (("content", self.content), ("reasoning", self.reasoning),
                              ("reasoning_content", self.reasoning)):
                if delta.get(key):
                    sink.append(delta[key])
                    token = True
                    if key == "reasoning":
                        break  # servers that send both fields send the same text twice
            for call in delta.get("tool_calls") or []:
                pieces = self.calls.setdefault(int(call.get("index", 0)), [[], []])
                function = call.get("function") or {}
                pieces[0].append(function.get("name") or "")
                pieces[1].append(function.get("arguments") or "")
                token = True
            if token and self.measured.ttft_s is None:
                self.measured.ttft_s = time.perf_counter() - self.started
            if choice.get("finish_reason"):
                self.measured.finish_reason = choice["finish_reason"]

    def finish(self) -> Measured:
        self.measured.latency_s = time.perf_counter() - self.started
        calls = tuple(ToolCall("".join(name), "".join(args)) for _, (name, args) in sorted(self.calls.items()))
        self.measured.reply = Reply("".join(self.content), "".join(self.reasoning), calls)
        return self.measured


def _refused(status: int, body: bytes, latency_s: float) -> Measured:
    """A request answered with an error status: its message and type from the OpenAI error body."""
    names: list[str] = []
    try:
        error = json.loads(body)["error"]
        message = error["message"]
        names = [str(error.get(key) or "") for key in ("code", "type")]
    except (ValueError, KeyError, TypeError, AttributeError):
        message = body.decode("utf-8", "replace")
    # the OpenAI code (invalid_value), else the type (vLLM's NotFoundError, whose code is the status again)
    code = next((n for n in names if n and not n.isdigit() and " " not in n), "")
    kind = f"HTTP {status} {shorten(code, 40)}" if code else f"HTTP {status}"
    return Measured(error=f"HTTP {status}: {shorten(str(message), 200)}", error_type=kind, status=status,
                    latency_s=latency_s)


def _retry_wait(response: Optional[httpx.Response], attempt: int) -> float:
    header = response.headers.get("retry-after", "") if response is not None else ""
    try:
        return min(max(float(header), 0.0), 30.0)
    except ValueError:
        return 0.5 * 2**attempt


async def send(client: httpx.AsyncClient, config: EvalConfig, body: dict[str, Any]) -> Measured:
    """One streamed request, tried again on a retryable failure before any answer arrived."""
    url = config.url.rstrip("/") + "/chat/completions"
    for attempt in range(config.retries + 1):
        last = attempt == config.retries
        started = time.perf_counter()
        try:
            async with client.stream("POST", url, json=body) as response:
                if response.status_code != 200:
                    data = await response.aread()
                    if response.status_code in RETRY_STATUSES and not last:
                        await asyncio.sleep(_retry_wait(response, attempt))
                        continue
                    return _refused(response.status_code, data, time.perf_counter() - started)
                stream = _Stream(started)
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data_text = line[5:].strip()
                    if data_text == "[DONE]":
                        break
                    try:
                        stream.feed(json.loads(data_text))
                    except (ValueError, TypeError, AttributeError):
                        stream.measured.error = "a stream chunk is not a JSON object"
                        stream.measured.error_type = "bad stream"
                    if stream.measured.error:
                        break
                return stream.finish()
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            if not last:
                await asyncio.sleep(_retry_wait(None, attempt))
                continue
            return Measured(error=f"{type(exc).__name__}: {shorten(str(exc), 200)}", error_type=type(exc).__name__)
        except httpx.TimeoutException:
            return Measured(error=f"timed out after {config.timeout_s:g} s", error_type="timeout",
                            latency_s=time.perf_counter() - started)
    raise AssertionError("unreachable: the last try returns")  # pragma: no cover


def _result(task: Task, effort: str, measured: Measured, verdict: Verdict) -> TaskResult:
    return TaskResult(task_id=task.id, suite=task.suite, effort=effort, correct=verdict.correct and not measured.error,
                      answer=verdict.answer, detail=measured.error or verdict.detail, error=measured.error,
                      error_type=measured.error_type,
                      finish_reason=measured.finish_reason, prompt_tokens=measured.prompt_tokens,
                      completion_tokens=measured.completion_tokens, reasoning_tokens=measured.reasoning_tokens,
                      latency_s=measured.latency_s, ttft_s=measured.ttft_s)


def open_client(config: EvalConfig, transport: Optional[httpx.AsyncBaseTransport] = None) -> httpx.AsyncClient:
    """The one client of a run: the key, the per-request timeout, ``concurrency`` connections."""
    headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
    timeout = httpx.Timeout(config.timeout_s, connect=min(config.timeout_s, 30.0))
    limits = httpx.Limits(max_connections=config.concurrency, max_keepalive_connections=config.concurrency)
    return httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits, transport=transport)


async def run(tasks: Sequence[Task], suites: dict[str, Suite], config: EvalConfig,
              on_result: Optional[Callable[[TaskResult], None]] = None,
              transport: Optional[httpx.AsyncBaseTransport] = None) -> list[TaskResult]:
    """Every task under every effort; results in (effort, task) order whatever order they finished in."""
    requests = asyncio.Semaphore(config.concurrency)
    checks = asyncio.Semaphore(os.cpu_count() or 1)
    async with open_client(config, transport) as client:
        async def one(task: Task, effort: str) -> TaskResult:
            async with requests:
                measured = await send(client, config, request_body(task, effort, config))
            if measured.error:
                verdict = Verdict(False)
            else:
                async with checks:
                    verdict = await asyncio.to_thread(suites[task.suite].check, task, measured.reply)
            result = _result(task, effort, measured, verdict)
            if on_result is not None:
                on_result(result)
            return result

        return list(await asyncio.gather(*(one(task, effort) for effort in config.efforts for task in tasks)))


async def served_models(url: str, api_key: Optional[str] = None, timeout_s: float = 30.0) -> list[str]:
    """The ids ``GET {url}/models`` lists (to default ``--model`` to the endpoint's only model)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(headers=headers, timeout=timeout_s) as client:
        response = await client.get(url.rstrip("/") + "/models")
        response.raise_for_status()
        return [str(m["id"]) for m in response.json().get("data", []) if isinstance(m, dict) and "id" in m]

