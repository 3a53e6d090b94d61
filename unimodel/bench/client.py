"""One streaming chat request, timed: from the send to every token-bearing chunk to the end of the stream.

:func:`send` posts one body to ``/chat/completions`` and returns a :class:`RequestRecord` whatever happens:
a failure is recorded with its type (``http_<status>``, ``timeout``, ``connect_error``,
``connection_dropped``, ``stream_error`` for an error frame mid-stream, ``incomplete_stream`` for a stream
that ends without ``[DONE]``, ``invalid_response``, ``transport_error``), never raised, with its code (the
error body's ``code`` or ``type``, or the transport exception's class: ``RequestRecord.error_kind`` is what the
report groups errors by) and a message. Only cancellation (the run being stopped) propagates. An error body
is read up to 64 KiB, whatever its size.

What is timed, with ``time.perf_counter()``:

- ``start``: just before the request is written; ``first_byte``: the response's status line and headers;
- ``first_token``: the first chunk that carries a token of any kind: ``delta.reasoning`` /
  ``delta.reasoning_content`` (the thinking), ``delta.content`` or ``delta.tool_calls`` (as GuideLLM counts
  them: an empty ``content: ""`` role chunk is no token);
- ``first_answer``: the first chunk with ``content`` or ``tool_calls``, i.e. after the thinking;
- ``chunk_times``: the arrival of every token-bearing chunk; ``last_token`` the last of them; ``end``: the
  end of the stream (``[DONE]``) or the failure.

Token counts come from the server's ``usage`` (``completion_tokens``, and
``completion_tokens_details.reasoning_tokens``) when it reports them; otherwise each token-bearing chunk
counts as one token (how vLLM and unimodel stream), and the record says which (``*_source``).

The SSE framing is parsed here by hand (``data:`` lines of JSON, ``[DONE]``): it is ten lines, and a library
would hide where each chunk's arrival time is taken. Each worker owns one ``httpx.AsyncClient`` limited to one
connection (:func:`make_client`), so no pool is shared between workers.
"""

from __future__ import annotations

import functools
import json
import ssl
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import httpx


@dataclass(frozen=True)
class Target:
    """Where requests go: an OpenAI-compatible base URL (``.../v1``) and its key."""

    base_url: str
    api_key: Optional[str] = None
    timeout_s: float = 600.0
    connect_timeout_s: float = 10.0

    @property
    def chat_url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


@functools.lru_cache(maxsize=1)
def _tls() -> ssl.SSLContext:
    """One TLS context for every client: building one reads the CA bundle (~20 ms), too slow per worker."""
    return httpx.create_ssl_context()


def make_client(target: Target) -> httpx.AsyncClient:
    """A client of exactly one keep-alive connection (one per worker: the tool must not be the bottleneck)."""
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    return httpx.AsyncClient(
        headers=headers,
        verify=_tls(),
        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        timeout=httpx.Timeout(target.timeout_s, connect=target.connect_timeout_s),
    )


@dataclass
class RequestRecord:
    index: int
    kind: str
    effort: Optional[str]
    start: float
    end: float = 0.0
    scheduled: Optional[float] = None  # open loop: when the request was due (its Poisson arrival)
    first_byte: Optional[float] = None
    first_token: Optional[float] = None
    first_answer: Optional[float] = None
    last_token: Optional[float] = None
    chunk_times: list[float] = field(default_factory=list)
    reasoning_chunks: int = 0
    answer_chunks: int = 0
    prompt_tokens: Optional[int] = None
    usage_completion_tokens: Optional[int] = None
    usage_reasoning_tokens: Optional[int] = None
    status: Optional[int] = None
    error: Optional[str] = None  # the error type; None when the request completed
    error_message: Optional[str] = None
    error_code: Optional[str] = None  # the error body's code (else type), or the transport exception's class

    @property
    def error_kind(self) -> Optional[str]:
        """What errors are grouped by: the type and, when known, the code (``http_400 invalid_value``)."""
        if self.error is None:
            return None
        return f"{self.error} {self.error_code}" if self.error_code else self.error

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def output_tokens(self) -> int:
        """Tokens generated, thinking included: the server's count, else the token-bearing chunks."""
        if self.usage_completion_tokens is not None:
            return self.usage_completion_tokens
        return len(self.chunk_times)

    @property
    def output_tokens_source(self) -> str:
        return "usage" if self.usage_completion_tokens is not None else "counted"

    @property
    def reasoning_tokens(self) -> int:
        if self.usage_reasoning_tokens is not None:
            return self.usage_reasoning_tokens
        return self.reasoning_chunks

    @property
    def reasoning_tokens_source(self) -> str:
        return "usage" if self.usage_reasoning_tokens is not None else "counted"

    @property
    def answer_tokens(self) -> int:
        return max(0, self.output_tokens - self.reasoning_tokens)


MAX_ERROR_BODY = 64 * 1024  # bytes of an error answer read (the rest is dropped with the connection)
MAX_CODE_CHARS = 48


def error_detail(raw: bytes) -> tuple[str, Optional[str]]:
    """An error answer's message and code: OpenAI's ``{"error": {"message", "code", "type"}}`` (the code when it
    is a word, else the type: vLLM sends ``"code": 404``), FastAPI's ``{"detail": ...}``, else the raw text."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code = next((v for v in (error.get("code"), error.get("type")) if isinstance(v, str) and v.strip()), None)
            return str(error.get("message", ""))[:300], None if code is None else _word(code)
        if isinstance(error, str):
            return error[:300], None
        if "detail" in body:
            return str(body["detail"])[:300], None
    return raw[:300].decode("utf-8", "replace"), None


def _word(text: str) -> str:
    """A server's error code as one short printable word (it becomes part of a table's key)."""
    return "".join(c if c.isprintable() and not c.isspace() else "_" for c in text.strip())[:MAX_CODE_CHARS]


async def read_bounded(response: httpx.Response, limit: int = MAX_ERROR_BODY) -> bytes:
    """At most ``limit`` bytes of a response's body: an error page can be any size."""
    data = bytearray()
    async for part in response.aiter_bytes():
        data += part
        if len(data) >= limit:
            break
    return bytes(data[:limit])


def _take_usage(record: RequestRecord, usage: Any) -> None:
    if not isinstance(usage, dict):
        return
    if isinstance(usage.get("prompt_tokens"), int):
        record.prompt_tokens = usage["prompt_tokens"]
    if isinstance(usage.get("completion_tokens"), int):
        record.usage_completion_tokens = usage["completion_tokens"]
    details = usage.get("completion_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("reasoning_tokens"), int):
        record.usage_reasoning_tokens = details["reasoning_tokens"]


def chunk_tokens(frame: dict[str, Any]) -> tuple[bool, bool]:
    """Whether a ``chat.completion.chunk`` carries a thinking token, and an answer token (content or a call)."""
    thinking = answer = False
    for choice in frame.get("choices") or ():
        delta = choice.get("delta") or {}
        thinking = thinking or bool(delta.get("reasoning") or delta.get("reasoning_content"))
        answer = answer or bool(delta.get("content") or delta.get("tool_calls"))
    return thinking, answer


def _take_chunk(record: RequestRecord, frame: dict[str, Any], now: float) -> None:
    """Fold one ``chat.completion.chunk`` into the record (usage, and the chunk's tokens if it has any)."""
    if frame.get("usage"):
        _take_usage(record, frame["usage"])
    thinking, answer = chunk_tokens(frame)
    if not (thinking or answer):
        return
    record.chunk_times.append(now)
    record.last_token = now
    if record.first_token is None:
        record.first_token = now
    if thinking:
        record.reasoning_chunks += 1
    if answer:
        record.answer_chunks += 1
        if record.first_answer is None:
            record.first_answer = now


def _take_whole_body(record: RequestRecord, raw: bytes, now: float) -> None:
    """A server that answered one JSON body although asked to stream: one chunk, at the body's arrival."""
    body = json.loads(raw)
    message = ((body.get("choices") or [{}])[0] or {}).get("message") or {}
    frame = {"choices": [{"delta": message}], "usage": body.get("usage")}
    _take_chunk(record, frame, now)


def _failed(record: RequestRecord, error: str, message: str, exc: Optional[BaseException] = None) -> None:
    if record.end:  # the stream had already ended ([DONE] or an error frame): a failure while draining is moot
        return
    record.error, record.error_message = error, message[:300]
    record.error_code = type(exc).__name__ if exc is not None else None


async def send(client: httpx.AsyncClient, url: str, body: dict[str, Any], *, index: int, kind: str,
               effort: Optional[str], scheduled: Optional[float] = None) -> RequestRecord:
    """Send one streaming request and time it; failures come back as a record with ``error`` set."""
    record = RequestRecord(index=index, kind=kind, effort=effort, start=time.perf_counter(), scheduled=scheduled)
    try:
        await _stream(client, url, body, record)
    except httpx.TimeoutException as exc:
        _failed(record, "timeout", f"no answer within the timeout ({type(exc).__name__})", exc)
    except httpx.ConnectError as exc:
        _failed(record, "connect_error", str(exc) or type(exc).__name__, exc)
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        _failed(record, "connection_dropped", str(exc) or type(exc).__name__, exc)
    except httpx.HTTPError as exc:
        _failed(record, "transport_error", f"{type(exc).__name__}: {exc}", exc)
    except (ValueError, AttributeError, TypeError) as exc:  # JSON that is not a chat completion chunk
        _failed(record, "invalid_response", str(exc), exc)
    finally:
        if not record.end:
            record.end = time.perf_counter()
    return record


async def _stream(client: httpx.AsyncClient, url: str, body: dict[str, Any], record: RequestRecord) -> None:
    """Read the whole response (so the connection is kept for the next request); ``end`` is ``[DONE]``'s arrival."""
    async with client.stream("POST", url, json=body) as response:
        record.first_byte = time.perf_counter()
        record.status = response.status_code
        if response.status_code >= 400:
            record.error = f"http_{response.status_code}"
            record.error_message, record.error_code = error_detail(await read_bounded(response))
            return
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            _take_whole_body(record, await response.aread(), time.perf_counter())
            return
        async for line in response.aiter_lines():
            if record.end or not line.startswith("data:"):
                continue  # after [DONE] or an error frame: drained; blank separators, comments, event: lines
            now = time.perf_counter()
            payload = line[5:].strip()
            if payload == "[DONE]":
                record.end = now
                continue
            frame = json.loads(payload)
            if isinstance(frame, dict) and frame.get("error"):
                error = frame["error"]
                record.error = "stream_error"
                record.error_message, record.error_code = error_detail(json.dumps({"error": error}).encode())
                record.end = now
                continue
            _take_chunk(record, frame, now)
        if not record.end:
            record.error, record.error_message = "incomplete_stream", "the stream ended without [DONE]"
