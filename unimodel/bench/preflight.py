"""The test request sent before a benchmark: if the endpoint refuses the workload, say why in one line and stop.

``vllm bench serve`` sends one test request first and stops with its error; without that, a dead URL, a wrong
model name, a URL without ``/v1`` or a key whose route caps ``max_tokens`` below the workload's all gave a
table of zeros, "errors 10" and empty plots. :func:`preflight` sends the first request of each kind the
workload has (one for chat, four for ``mixed``: a text-only model refuses the vision part, a capped route the
reasoning part), exactly as the run will send it, with the first effort, and hangs up at the first token, so
the check costs a prefill, not a 2,048-token answer. A failure becomes one line that says what to fix
(:func:`explain`); a 404 is told apart by reading ``/models``: a model not in its list is a wrong ``--model``
(the line names the served ones), no list at all a wrong URL.

Everything read from the server is bounded (error bodies 64 KiB, ``/models`` 1 MiB, 10 names shown) and
made one printable line.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional
from urllib.parse import urlsplit

import httpx

from unimodel.bench.client import Target, chunk_tokens, error_detail, make_client, read_bounded
from unimodel.bench.failures import one_line
from unimodel.bench.workloads import Workload

MAX_MODELS_BODY = 1024 * 1024
MAX_BODY = 8 * 1024 * 1024  # a whole (non-streamed) answer
SHOWN_MODELS = 10
MESSAGE_CHARS = 200


class PreflightFailed(Exception):
    """The test request failed; ``str()`` is the one line to show."""


def first_of_each_kind(workload: Workload, model: str, effort: Optional[str]) -> list[tuple[str, dict[str, Any]]]:
    """The first request of each kind, in the workload's order, as the run sends them."""
    seen: dict[str, tuple[str, dict[str, Any]]] = {}
    for index, item in enumerate(workload.items):
        if item.kind not in seen:
            seen[item.kind] = workload.request(index, model, effort)
    return list(seen.values())


async def preflight(target: Target, workload: Workload, model: str, effort: Optional[str]) -> None:
    """Raise :class:`PreflightFailed` with the reason when a test request of the workload fails."""
    async with make_client(target) as client:
        for kind, body in first_of_each_kind(workload, model, effort):
            problem = await _try(client, target, model, kind, body)
            if problem is not None:
                raise PreflightFailed(one_line(problem, 600))


async def _try(client: httpx.AsyncClient, target: Target, model: str, kind: str,
               body: dict[str, Any]) -> Optional[str]:
    url = target.base_url
    try:
        async with client.stream("POST", target.chat_url, json=body) as response:
            if response.status_code < 400:
                return await _answer(response, url)
            status, ctype = response.status_code, response.headers.get("content-type", "")
            raw = await read_bounded(response)
        served = await served_models(client, target) if status in (404, 405) else None  # the connection is free
        return explain(target, model, kind, body, status, ctype, raw, served)
    except httpx.ConnectError as exc:
        return f"cannot connect to {url} ({_why(exc)}): is the server running, and is --url right?"
    except httpx.TimeoutException as exc:
        return (f"the server at {url} did not answer the test request in time ({type(exc).__name__}; "
                f"--timeout is {target.timeout_s:g}s)")
    except httpx.HTTPError as exc:
        return f"the test request to {url} failed: {type(exc).__name__}: {exc}"
    except (ValueError, AttributeError, TypeError) as exc:
        return (f"the server at {url} answered something that is not an OpenAI chat completion ({exc}): "
                f"{_url_hint(url)}")


def _why(exc: BaseException) -> str:
    """The operating system's reason under a connect error ("Connection refused"), else the error's own text."""
    cause: Optional[BaseException] = exc
    for _ in range(8):  # httpx → httpcore → anyio → OSError, bounded
        if cause is None:
            break
        if isinstance(cause, OSError) and (cause.errno or cause.strerror):
            return os.strerror(cause.errno) if isinstance(cause.errno, int) and cause.errno > 0 else str(cause.strerror)
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


async def _answer(response: httpx.Response, url: str) -> Optional[str]:
    """None when the answer is a chat completion (streamed, up to its first token, or whole), else why not."""
    ctype = response.headers.get("content-type", "")
    if ctype.startswith("text/event-stream"):
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                return None
            frame = json.loads(payload)
            if isinstance(frame, dict) and frame.get("error"):
                message, code = error_detail(json.dumps({"error": frame["error"]}).encode())
                return f"the server at {url} failed the test request mid-stream ({code or 'error'}: {message})"
            if any(chunk_tokens(frame)):
                return None  # a token: the request was admitted and is being served; hang up
        return f"the server at {url} ended the test request's stream without [DONE]"
    if "json" in ctype:
        answer = json.loads(await read_bounded(response, MAX_BODY))
        if isinstance(answer, dict) and isinstance(answer.get("choices"), list):
            return None
    return (f"the server at {url} answered {response.status_code} with {ctype.split(';')[0] or 'no content type'}, "
            f"not an OpenAI chat completion, for {urlsplit(url).path.rstrip('/')}/chat/completions: "
            f"{_url_hint(url)}")


async def served_models(client: httpx.AsyncClient, target: Target) -> Optional[list[str]]:
    """The ids ``GET /models`` lists, or None when it gives no OpenAI model list."""
    try:
        async with client.stream("GET", target.base_url.rstrip("/") + "/models") as response:
            if response.status_code != 200:
                return None
            data = json.loads(await read_bounded(response, MAX_MODELS_BODY)).get("data")
    except (httpx.HTTPError, ValueError, AttributeError):
        return None
    if not isinstance(data, list):
        return None
    return [one_line(str(m["id"]), 100) for m in data if isinstance(m, dict) and "id" in m]


def _url_hint(url: str) -> str:
    path = urlsplit(url).path.rstrip("/")
    if not path.endswith("/v1"):
        return f"is the URL missing /v1 (try --url {url.rstrip('/')}/v1)?"
    return "is --url an OpenAI-compatible endpoint?"


def _param(raw: bytes) -> Optional[str]:
    try:
        error = json.loads(raw).get("error")
        return str(error.get("param")) if isinstance(error, dict) and error.get("param") else None
    except (ValueError, AttributeError):
        return None


def explain(target: Target, model: str, kind: str, body: dict[str, Any], status: int, ctype: str, raw: bytes,
            served: Optional[list[str]]) -> str:
    """One line for a test request refused with ``status``: what the server said, and what to change."""
    url = target.base_url
    message, code = error_detail(raw)
    message = one_line(message, MESSAGE_CHARS) if "html" not in ctype else "an HTML page"
    said = f"{status}{' ' + code if code else ''}: {message}" if message else str(status)
    if status in (401, 403):
        fix = "check --api-key" if target.api_key else "give --api-key KEY"
        return f"the server at {url} refused the test request ({said}): {fix}"
    if status in (404, 405):
        if served is not None and model not in served:
            names = ", ".join(served[:SHOWN_MODELS]) or "nothing"
            more = f" and {len(served) - SHOWN_MODELS} more" if len(served) > SHOWN_MODELS else ""
            return f"model '{model}' is not served at {url}; it serves: {names}{more} (pass one to --model)"
        path = urlsplit(target.chat_url).path
        if served is None:
            return f"the server at {url} answered {status} for {path}: {_url_hint(url)}"
        return f"the server at {url} answered {said} for {path}"
    where = f"the {kind} workload's test request" if kind != "file" else "the workload file's first request"
    line = f"the server at {url} refused {where} ({said})"
    param = _param(raw) or ""
    if status == 400 and ("max_tokens" in param or "max_tokens" in message):
        sent = body.get("max_tokens", body.get("max_completion_tokens"))
        return line + f": it sends max_tokens {sent}; lower it with --max-tokens N"
    if status == 400 and "image" in message.lower() and kind in ("vision", "file"):
        return line + ": it sends images; use a model that reads images, or another --workload"
    return line
