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
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal, Optional

import httpx

from unimodel.engines.base import Engine, GenerationRequest
from unimodel.engines.upstream_stream import UpstreamStreamDecoder
from unimodel.errors import (
    ServiceUnavailableError,
    UnsupportedFeatureError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeoutError,
)
from unimodel.formats.base import ModelFormat
from unimodel.formats.registry import get_format
from unimodel.protocol.events import Event, Finish, ReasoningDelta, ThinkingBudgetReached, Usage
from unimodel.protocol.openai import ModelCard

log = logging.getLogger("unimodel.upstream")

ParseMode = Literal["auto", "upstream", "gateway"]

# our request extensions that upstreams must not see (we enforce or resolve them ourselves)
_OWN_FIELDS = {"route", "include_reasoning", "thinking_budget", "reasoning_effort", "model", "stream",
               "stream_options"}


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

    # ---- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout, limits=self._limits)
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
        """Ask the upstream for its models; ready when it answers 200."""
        assert self._client is not None
        try:
            resp = await self._client.get(f"{self.base_url}/models", headers=self._headers,
                                          timeout=self._timeout.connect)
            ok = resp.status_code == 200
            if ok:
                data = resp.json().get("data", [])
                self._discovered = {
                    str(m["id"]): m["max_model_len"] if isinstance(m.get("max_model_len"), int) else None
                    for m in data if isinstance(m, dict) and "id" in m
                }
        except (httpx.HTTPError, ValueError, AttributeError):
            ok = False
        if ok != self._ready:
            log.info("upstream %s is %s", self.base_url, "ready" if ok else "not ready")
        self._ready = ok
        return ok

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self._probe_interval_s if self._ready else min(1.0, self._probe_interval_s))
            await self.probe()

    # ---- generation ------------------------------------------------------------------------------------

    def build_payload(self, request: GenerationRequest,
                      continue_from: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        wire = request.wire.model_dump(mode="json", exclude_none=True, by_alias=True)
        payload = {k: v for k, v in wire.items() if k not in _OWN_FIELDS}
        if self.parse_mode != "upstream":  # hosted APIs get the client's messages untouched
            payload["messages"] = [_normalise_history(m) for m in payload["messages"]]
        payload["model"] = self.upstream_model or request.served_model
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
        if request.max_tokens is not None:
            payload.pop("max_completion_tokens", None)
            payload["max_tokens"] = request.max_tokens
        if request.model_effort is not None:
            payload["reasoning_effort"] = request.model_effort
        if self.parse_mode != "upstream":
            payload["skip_special_tokens"] = False
            if request.thinking_budget is not None:
                # vLLM: usage in every frame, so a call we cut at the budget still reports its prompt tokens
                payload["stream_options"]["continuous_usage_stats"] = True
        if continue_from is not None:  # vLLM/SGLang: continue the final assistant message, no new turn
            payload["messages"].append(continue_from)
            payload["continue_final_message"] = True
            payload["add_generation_prompt"] = False
        return payload

    def _format_for(self, request: GenerationRequest) -> ModelFormat:
        return self._formats.get(request.served_model, self.format)

    def _decoder(self, request: GenerationRequest) -> UpstreamStreamDecoder:
        return UpstreamStreamDecoder(self._format_for(request), parse_content=self.parse_mode != "upstream")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """One upstream call; with a thinking budget, two spliced into one response.

        At the budget the first call is cut (closing the connection stops the upstream's work), then the
        upstream continues from an assistant prefix holding the thinking so far, closed, and answers. vLLM's
        ``thinking_token_budget`` is not used: it cannot be relied on in Mistral tokenizer mode.
        """
        if request.wire.logprobs:  # not carried through our events yet: refuse rather than drop silently
            raise UnsupportedFeatureError("logprobs are not supported through unimodel yet", param="logprobs")
        budget = request.thinking_budget
        decoder = self._decoder(request)
        first = self._call(self.build_payload(request), decoder)
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
        remaining = None if request.max_tokens is None else request.max_tokens - spent.completion_tokens
        if remaining is not None and remaining <= 0:  # no room left for an answer: say so, never go silent
            yield spent
            yield Finish("length")
            return
        prefix = self._format_for(request).closed_thinking_message("".join(reasoning))
        payload = self.build_payload(request, continue_from=prefix)
        if remaining is not None:
            payload["max_tokens"] = remaining
        async for event in self._call(payload, self._decoder(request)):
            yield spent + event if isinstance(event, Usage) else event

    async def _call(self, payload: dict[str, Any],
                    decoder: UpstreamStreamDecoder) -> AsyncGenerator[Event, None]:
        if self._client is None:
            raise ServiceUnavailableError("the upstream engine is not started", retry_after=1)
        try:
            async with self._client.stream(
                "POST", f"{self.base_url}/chat/completions", json=payload, headers=self._headers
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
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError(f"the upstream did not answer in time ({type(exc).__name__})") from exc
        except httpx.ConnectError as exc:
            raise UpstreamConnectionError(f"cannot connect to the upstream at {self.base_url}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"the upstream connection failed: {type(exc).__name__}: {exc}") from exc
        for event in decoder.close():
            yield event


def _normalise_history(message: dict[str, Any]) -> dict[str, Any]:
    """Earlier thinking goes back under both names (vLLM reads ``reasoning``, SGLang ``reasoning_content``)."""
    if message.get("role") != "assistant":
        return message
    thinking = message.get("reasoning") or message.get("reasoning_content")
    if not thinking:
        return message
    return {**message, "reasoning": thinking, "reasoning_content": thinking}


def _json_body(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError as exc:
        raise UpstreamError("the upstream answered with a body that is not JSON") from exc
    if not isinstance(body, dict):
        raise UpstreamError("the upstream answered with JSON that is not an object")
    return body


def _status_error(resp: httpx.Response) -> UpstreamStatusError:
    message, param, code, etype = f"the upstream answered HTTP {resp.status_code}", None, None, None
    try:
        body = json.loads(resp.content or b"null")
    except ValueError:
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
    if resp.status_code >= 500:
        message = f"upstream error {resp.status_code}: {message}"
    return UpstreamStatusError(message, upstream_status=resp.status_code, param=param, code=code,
                               error_type=etype)
