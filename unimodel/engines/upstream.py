"""The upstream engine: any OpenAI-compatible server (vLLM, SGLang, llama.cpp, a hosted API).

All I/O goes through one injected ``httpx.AsyncClient`` (pooled, keep-alive), so tests swap in a
``MockTransport`` or a real loopback server. We always ask the upstream to stream, whatever the client asked:
one code path, early cancellation when the client leaves, and room for budget enforcement; a server that
answers a streaming request with one JSON body is handled too.

Parse modes (``--upstream-parse``):

* ``upstream`` — the upstream already splits reasoning and tool calls (vLLM ``--reasoning-parser mistral``):
  its ``reasoning``/``reasoning_content``/``tool_calls`` fields are normalised, its content passed through.
  Nothing non-standard is sent, so hosted APIs that reject unknown fields work.
* ``gateway`` — we ask for raw output (``skip_special_tokens: false``) and parse the text with ``formats/``.
* ``auto`` — both at once: raw output is asked for, upstream-parsed fields are normalised, and the content
  goes through the model family's parser, which passes plain text through and splits it when the model's
  markers show. So a stock engine and a pre-parsed one both just work.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import datetime, timezone
from typing import Any, Literal, Optional

import httpx

from unimodel.engines.base import Engine, GenerationRequest
from unimodel.engines.upstream_pool import upstream_transport
from unimodel.engines.upstream_payload import build_payload, prompt_text
from unimodel.engines.upstream_stream import UpstreamStreamDecoder, status_error
from unimodel.errors import (
    ServiceUnavailableError,
    UnimodelError,
    UnsupportedFeatureError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
)
from unimodel.formats.base import ModelFormat
from unimodel.formats.registry import get_format
from unimodel.protocol.events import Event, Finish, ReasoningDelta, ThinkingBudgetReached, Usage
from unimodel.protocol.openai import ModelCard

log = logging.getLogger("unimodel.upstream")

ParseMode = Literal["auto", "upstream", "gateway"]



class UpstreamEngine(Engine):
    kind = "upstream"

    def __init__(
        self,
        base_url: str,
        *,
        served_model_name: Optional[str] = None,
        upstream_model: Optional[str] = None,
        family: str = "mistral",
        families: Optional[dict[str, str]] = None,
        parse_mode: ParseMode = "auto",
        api_key: Optional[str] = None,
        client: Optional[httpx.AsyncClient] = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 600.0,
        max_connections: int = 256,
        probe_interval_s: float = 5.0,
        count_tokens: Optional[Callable[[str], int]] = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.upstream_model = upstream_model or served_model_name
        self.served_model_name = served_model_name or upstream_model
        self.format = get_format(family)
        # per served model overrides, e.g. a <think>-tags model behind the same llama.cpp server
        self._formats = {name: get_format(fam) for name, fam in (families or {}).items()}
        self.parse_mode: ParseMode = parse_mode
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._own_client = client is None
        self._client = client
        self._timeout = httpx.Timeout(connect=connect_timeout_s, read=read_timeout_s,
                                      write=read_timeout_s, pool=connect_timeout_s)
        self._limits = httpx.Limits(max_connections=max_connections,
                                    max_keepalive_connections=max_connections)
        self._probe_interval_s = probe_interval_s
        self._probe_task: Optional[asyncio.Task[None]] = None
        self._ready = False
        self._discovered: dict[str, Optional[int]] = {}  # model id → max_model_len (vLLM reports it)
        self._count_tokens = count_tokens  # our tokenizer, for upstreams that report no usage
        self._probe_failure: Optional[str] = None  # why the last probe said not ready (logged on change)

    # ---- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout, limits=self._limits,
                                             transport=upstream_transport(self._limits))
        await self.probe()
        self._probe_task = asyncio.create_task(self._probe_loop(), name="upstream-probe")

    async def aclose(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            try:
                await self._probe_task
            except asyncio.CancelledError:
                pass
            self._probe_task = None
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def is_ready(self) -> bool:
        return self._ready

    def models(self) -> list[ModelCard]:
        if self.served_model_name:
            limit = self._discovered.get(self.upstream_model or self.served_model_name)
            return [ModelCard(id=self.served_model_name, max_model_len=limit)]
        return [ModelCard(id=m, max_model_len=n) for m, n in self._discovered.items()]

    async def probe(self) -> bool:
        """Ask the upstream for its models: ready when it answers 200 with a JSON object (its ``data`` list,
        when well-formed, gives the models). Any other answer or failure is "not ready"; never raises, but
        for cancellation."""
        try:
            ok, why = await self._probe_once()
        except Exception as exc:  # a probe must never die of an upstream's odd answer
            ok, why = False, f"probe failed: {type(exc).__name__}"
            log.warning("probing upstream %s failed unexpectedly", self.base_url, exc_info=True)
        if ok != self._ready or (not ok and why != self._probe_failure):
            log.info("upstream %s is %s", self.base_url, "ready" if ok else f"not ready ({why})")
        self._probe_failure = None if ok else why
        self._ready = ok
        return ok

    async def _probe_once(self) -> tuple[bool, str]:
        if self._client is None:
            return False, "not started"
        try:
            resp = await self._client.get(f"{self.base_url}/models", headers=self._headers,
                                          timeout=self._timeout.connect)
        except httpx.HTTPError as exc:
            return False, type(exc).__name__
        if resp.status_code != 200:
            return False, f"HTTP {resp.status_code}"
        try:
            body = resp.json()
        except ValueError:  # not JSON, or not UTF-8
            return False, "the models list is not JSON"
        if not isinstance(body, dict):
            return False, "the models list is not a JSON object"
        data = body.get("data")
        discovered: dict[str, Optional[int]] = {}
        for m in data if isinstance(data, list) else []:
            if not isinstance(m, dict) or not isinstance(m.get("id"), (str, int)) or isinstance(m["id"], bool):
                continue
            limit = m.get("max_model_len")
            discovered[str(m["id"])] = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
        self._discovered = discovered
        return True, ""

    async def _probe_loop(self) -> None:
        while True:
            try:
                await asyncio.sleep(self._probe_interval_s if self._ready else min(1.0, self._probe_interval_s))
                await self.probe()
            except asyncio.CancelledError:
                raise
            except Exception:  # never a dead loop: /ready would go on saying what it last knew
                self._ready = False
                log.exception("the upstream probe loop failed; it goes on")
                await asyncio.sleep(min(1.0, self._probe_interval_s))

    # ---- generation ------------------------------------------------------------------------------------

    def build_payload(self, request: GenerationRequest,
                      continue_from: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """The upstream's request (see :func:`unimodel.engines.upstream_payload.build_payload`)."""
        return build_payload(request, self.upstream_model or request.served_model,
                             raw_output=self.parse_mode != "upstream", continue_from=continue_from)

    def _format_for(self, request: GenerationRequest) -> ModelFormat:
        return self._formats.get(request.served_model, self.format)

    def _decoder(self, request: GenerationRequest) -> UpstreamStreamDecoder:
        return UpstreamStreamDecoder(self._format_for(request), parse_content=self.parse_mode != "upstream")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """One upstream call; with a thinking budget, two spliced into one response.

        At the budget the first call is cut (closing the connection stops the upstream's work), then the
        upstream continues from an assistant prefix holding the thinking so far, closed, and answers. vLLM's
        ``thinking_token_budget`` is not used: it cannot be relied on in Mistral tokenizer mode.

        ``request.connect_timeout_s`` overrides the engine's connect (and pool) timeout for this request only (a
        route's own timeout, set by the resilience stage); the read timeout stays the engine's.
        """
        if request.sampling.logprobs:  # not carried through our events yet: refuse rather than drop silently
            raise UnsupportedFeatureError("logprobs are not supported through unimodel yet", param="logprobs")
        budget = request.thinking_budget
        decoder = self._decoder(request)
        connect = request.connect_timeout_s
        timeout = None if connect is None else httpx.Timeout(
            connect=connect, read=self._timeout.read, write=self._timeout.write, pool=connect)
        first = self._call(self.build_payload(request), decoder, timeout)
        reasoning: list[str] = []
        try:
            async for event in first:
                if isinstance(event, ReasoningDelta):
                    reasoning.append(event.text)
                yield event
                if budget is not None and decoder.thinking_open and decoder.reasoning_tokens >= budget:
                    break
            else:
                return  # finished within the budget (or no budget): one call was all it took
        finally:
            await first.aclose()

        used = decoder.reasoning_tokens
        spent = decoder.usage_so_far()
        yield ThinkingBudgetReached(used)
        prefix = self._format_for(request).closed_thinking_message("".join(reasoning))
        payload = self.build_payload(request, continue_from=prefix)
        limit = payload.get("max_tokens")  # what the first call was allowed, thinking included
        remaining = limit - spent.completion_tokens if isinstance(limit, int) else None
        if remaining is not None and remaining <= 0:  # no room left for an answer: say so, never go silent
            yield spent
            yield Finish("length")
            return
        if remaining is not None:
            payload["max_tokens"] = remaining
        async for event in self._call(payload, self._decoder(request), timeout):
            yield _continued(spent, event) if isinstance(event, Usage) else event

    async def _call(self, payload: dict[str, Any], decoder: UpstreamStreamDecoder,
                    timeout: Optional[httpx.Timeout] = None) -> AsyncGenerator[Event, None]:
        if self._client is None:
            raise ServiceUnavailableError("the upstream engine is not started", retry_after=1)
        decoder.set_counting(self._count_tokens, lambda: prompt_text(payload))
        try:
            async with self._client.stream(
                "POST", f"{self.base_url}/chat/completions", json=payload, headers=self._headers,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            ) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise _status_error(resp)
                if "text/event-stream" not in resp.headers.get("content-type", ""):
                    await resp.aread()
                    for event in decoder.whole_response(_json_body(resp)):
                        yield event
                    return
                # read to the end of the body even after [DONE], so the connection goes back to the pool
                async for line in resp.aiter_lines():
                    for event in decoder.sse_line(line):
                        yield event
        # the client gets our words; where the upstream is and what went wrong on the wire go to our log
        except httpx.TimeoutException as exc:
            log.warning("upstream %s timed out: %s", self.base_url, type(exc).__name__)
            raise UpstreamTimeoutError(f"the upstream did not answer in time ({type(exc).__name__})") from exc
        except httpx.ConnectError as exc:
            log.warning("cannot connect to the upstream at %s: %s", self.base_url, exc)
            raise UpstreamConnectionError("cannot connect to the upstream") from exc
        except httpx.HTTPError as exc:
            log.warning("the connection to upstream %s failed: %s: %s", self.base_url, type(exc).__name__, exc)
            raise UpstreamError("the upstream connection failed") from exc
        for event in decoder.close():
            yield event


def _continued(spent: Usage, more: Usage) -> Usage:
    """Usage over a call cut at the thinking budget and its continuation: the prompt is the request's (the
    continuation's prompt re-reads it with the thinking), the output is the thinking plus the answer."""
    return Usage(prompt_tokens=spent.prompt_tokens,
                 completion_tokens=spent.completion_tokens + more.completion_tokens,
                 reasoning_tokens=spent.reasoning_tokens + more.reasoning_tokens,
                 estimated=spent.estimated or more.estimated)


def _json_body(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError as exc:
        log.warning("the upstream answered with a body that is not JSON: %r", resp.content[:200])
        raise UpstreamError("the upstream answered with a body that is not JSON") from exc
    if not isinstance(body, dict):
        log.warning("the upstream answered with JSON that is not an object: %r", resp.content[:200])
        raise UpstreamError("the upstream answered with JSON that is not an object")
    return body


def _status_error(resp: httpx.Response) -> UnimodelError:
    """Our error for an upstream's error status (see :func:`status_error` for what the client is told)."""
    message, param, code, etype = f"the upstream answered HTTP {resp.status_code}", None, None, None
    try:
        body = json.loads(resp.content or b"null")
    except ValueError:  # not JSON, or not UTF-8
        body = None
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        message = str(err.get("message") or message)
        param = err.get("param") if isinstance(err.get("param"), str) else None
        code = str(err["code"]) if err.get("code") is not None else None
        etype = err.get("type") if isinstance(err.get("type"), str) else None
    elif isinstance(body, dict) and isinstance(body.get("message"), str):
        message = body["message"]  # vLLM's older flat error shape
    elif isinstance(err, str):
        message = err
    return status_error(resp.status_code, message, param=param, code=code, error_type=etype,
                        retry_after=_retry_after(resp.headers), body=resp.text)


def _retry_after(headers: httpx.Headers) -> Optional[float]:
    """``Retry-After`` in seconds, from seconds or an HTTP-date (or OpenAI's ``retry-after-ms``)."""
    value = headers.get("retry-after", "").strip()
    if value:
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            seconds = (when - datetime.now(timezone.utc)).total_seconds()
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        ms = float(headers.get("retry-after-ms", ""))
    except ValueError:
        return None
    return max(0.0, ms / 1000) if math.isfinite(ms) else None
