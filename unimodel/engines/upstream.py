"""The upstream engine: any OpenAI-compatible server (vLLM, SGLang, llama.cpp, a hosted API).

All I/O goes through one ``aiohttp.ClientSession`` (a pool of ``max_connections`` keep-alive connections),
made in :meth:`UpstreamEngine.start` or injected (tests hand in one of their own). aiohttp rather than httpx:
streaming a 23-frame answer cost about 0.4 ms of CPU a request against httpx's 1.1 ms, the largest item in the
gateway's profile. The session is configured to surprise no one: no proxies or credentials from the
environment (the upstream is configured explicitly), no cookies, no redirects followed, no error raised for a
status (we map every status ourselves), and the TLS trust httpx gave (``SSL_CERT_FILE``/``SSL_CERT_DIR``,
else certifi's bundle: :func:`unimodel.tls.client_context`).

The upstream is asked to stream when the client streams, when the model is told to think (a budget to watch,
thinking tokens to count one a frame), or when a route times the first token (``request.streamed``); a client
that waits for the whole answer gets it from one JSON body, with no per-token frames to relay. Either way both
answers are decoded into the same events, a client that leaves closes the connection at once (so the upstream
stops its work), and a server that answers a streaming request with one JSON body is handled too.

Timeouts: connecting, waiting for a free connection in the pool included, is bounded by the connect timeout
(per request by ``request.connect_timeout_s``). The read timeout (aiohttp's ``sock_read``) is the longest the
upstream may stay silent: for a streamed answer, the gap between two reads; for a client that does not stream
(answered from one upstream body), that is the whole answer, so it must allow the longest generation. Nothing
else bounds the whole answer (the resilience stage does, per route).

This module owns the connection, the probe, the reads and thinking budgets; the request body is built by
:mod:`~unimodel.engines.upstream_payload`, the answer decoded into events by
:mod:`~unimodel.engines.upstream_stream`, and error answers mapped by :mod:`~unimodel.engines.upstream_errors`.

Parse modes (``--upstream-parse``):

* ``upstream`` — the upstream already splits reasoning and tool calls (vLLM ``--reasoning-parser mistral``):
  its ``reasoning``/``reasoning_content``/``tool_calls`` fields are normalised, its content passed through.
  Nothing non-standard is sent, so hosted APIs that reject unknown fields work.
* ``gateway`` — we ask for raw output (the family's ``raw_output_fields``: ``skip_special_tokens: false``, or
  nothing for Mistral, whose markers vLLM keeps) and parse the text with ``formats/``.
* ``auto`` — both at once: raw output is asked for, upstream-parsed fields are normalised, and the content
  goes through the model family's parser, which passes plain text through and splits it when the model's
  markers show. So a stock engine and a pre-parsed one both just work.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Literal, Optional

import aiohttp

from unimodel.engines.base import Engine, GenerationRequest, PromptCount
from unimodel.engines.options import UpstreamOptions
from unimodel.engines.sse_lines import SseLineSplitter
from unimodel.engines.upstream_payload import build_payload, prompt_text
from unimodel.engines.upstream_errors import response_error
from unimodel.engines.upstream_stream import UpstreamStreamDecoder
from unimodel.engines.upstream_text import (
    TextCompletionDecoder,
    completion_payload,
    read_detokenize_answer,
    read_tokenize_answer,
    tokenize_payload,
)
from unimodel.errors import (
    ServiceUnavailableError,
    UnimodelError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
)
from unimodel.formats.base import ModelFormat
from unimodel.formats.registry import get_format
from unimodel.printable import mask_url, mask_urls_in, printable
from unimodel.protocol.events import FLUSH, Event, Finish, ReasoningDelta, ThinkingBudgetReached, Usage
from unimodel.protocol.jsonbytes import dumps
from unimodel.protocol.openai import ModelCard
from unimodel.tls import client_context

log = logging.getLogger("unimodel.upstream")

ParseMode = Literal["auto", "upstream", "gateway"]

KEEPALIVE_S = 5.0  # an idle pooled connection is closed after this (httpx's default; vLLM's uvicorn keeps 5 s)


class UpstreamEngine(Engine):
    kind = "upstream"

    @property
    def options(self) -> UpstreamOptions:
        """The options it runs with, in the shape the composition root builds it from."""
        return UpstreamOptions(
            api_key=self._api_key, parse_mode=self.parse_mode, family=self.format.name,  # type: ignore[arg-type]
            families={name: fmt.name for name, fmt in self._formats.items()},  # type: ignore[misc]
            connect_timeout_s=self._timeout.connect, read_timeout_s=self._read_timeout_s,  # type: ignore[arg-type]
            max_connections=self._max_connections)

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
        session: Optional[aiohttp.ClientSession] = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 600.0,
        max_connections: int = 256,
        probe_interval_s: float = 5.0,
        count_tokens: Optional[Callable[[str], int]] = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.display_url = mask_url(self.base_url)  # for log lines: credentials in the URL masked
        self.upstream_model = upstream_model or served_model_name
        self.served_model_name = served_model_name or upstream_model
        self.format = get_format(family)
        # per served model overrides, e.g. a <think>-tags model behind the same llama.cpp server
        self._formats = {name: get_format(fam) for name, fam in (families or {}).items()}
        self.parse_mode: ParseMode = parse_mode
        self._api_key = api_key
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._post_headers = {**self._headers, "Content-Type": "application/json"}
        self._own_session = session is None
        self._session = session
        self._read_timeout_s = read_timeout_s
        self._timeout = _timeouts(connect_timeout_s, read_timeout_s)
        self._probe_timeout = _timeouts(connect_timeout_s, connect_timeout_s)
        self._max_connections = max_connections
        self._probe_interval_s = probe_interval_s
        self._probe_task: Optional[asyncio.Task[None]] = None
        self._ready = False
        self._discovered: dict[str, Optional[int]] = {}  # model id → max_model_len (vLLM reports it)
        self._count_tokens = count_tokens  # our tokenizer, for upstreams that report no usage
        self._probe_failure: Optional[str] = None  # why the last probe said not ready (logged on change)
        self._missing: set[str] = set()  # token endpoints the upstream answered 404 (or 405, 501): never asked again

    # ---- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._session is None:
            self._session = self._new_session()
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
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _new_session(self) -> aiohttp.ClientSession:
        return upstream_session(self._max_connections, self._timeout, https=self.base_url.lower().startswith("https:"))

    def is_ready(self) -> bool:
        return self._ready

    async def check_health(self) -> bool:
        return await self.probe()  # now, rather than what the last probe of the loop found

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
            log.warning("probing upstream %s failed unexpectedly", self.display_url, exc_info=True)
        if ok != self._ready or (not ok and why != self._probe_failure):
            log.info("upstream %s is %s", self.display_url, "ready" if ok else f"not ready ({why})")
        self._probe_failure = None if ok else why
        self._ready = ok
        return ok

    async def _probe_once(self) -> tuple[bool, str]:
        if self._session is None:
            return False, "not started"
        try:  # the whole body is read, so the connection goes back to the pool
            async with self._session.get(f"{self.base_url}/models", headers=self._headers,
                                         timeout=self._probe_timeout, allow_redirects=False) as resp:
                status, raw = resp.status, await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            return False, type(exc).__name__
        if status != 200:
            return False, f"HTTP {status}"
        try:
            body = json.loads(raw)
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
                             raw_output=self.parse_mode != "upstream",
                             raw_fields=self._format_for(request).raw_output_fields, continue_from=continue_from)

    def _format_for(self, request: GenerationRequest) -> ModelFormat:
        return self._formats.get(request.served_model, self.format)

    def _decoder(self, request: GenerationRequest) -> UpstreamStreamDecoder:
        return UpstreamStreamDecoder(self._format_for(request), parse_content=self.parse_mode != "upstream",
                                     logprobs=bool(request.sampling.logprobs))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """One upstream call; with a thinking budget, two spliced into one response.

        At the budget the first call is cut (closing the connection stops the upstream's work), then the
        upstream continues from an assistant prefix holding the thinking so far, closed, and answers. vLLM's
        ``thinking_token_budget`` is not used: it cannot be relied on in Mistral tokenizer mode.

        ``request.connect_timeout_s`` overrides the engine's connect timeout (the wait for a pooled connection
        included) for this request only (a route's own timeout, set by the resilience stage); the read timeout
        stays the engine's.
        """
        budget = request.thinking_budget
        connect = request.connect_timeout_s
        timeout = None if connect is None else _timeouts(connect, self._read_timeout_s)
        if request.raw_prompt is not None:  # the legacy completions endpoint: no template, nothing parsed
            payload = completion_payload(request, self.upstream_model or request.served_model)
            decoder = TextCompletionDecoder(self.format, parse_content=False, logprobs=bool(request.sampling.logprobs))
            async for event in self._call(payload, decoder, timeout, path="/completions"):
                yield event
            return
        decoder = self._decoder(request)
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
                    timeout: Optional[aiohttp.ClientTimeout] = None,
                    path: str = "/chat/completions") -> AsyncGenerator[Event, None]:
        session = self._session
        if session is None:
            raise ServiceUnavailableError("the upstream engine is not started", retry_after=1)
        decoder.set_counting(self._count_tokens, lambda: prompt_text(payload))
        options: dict[str, Any] = {} if timeout is None else {"timeout": timeout}  # else the session's own
        try:
            resp = await session.post(f"{self.base_url}{path}", data=dumps(payload),
                                      headers=self._post_headers, allow_redirects=False, **options)
            read_to_end = False
            try:
                if resp.status >= 400:
                    raw = await resp.read()
                    read_to_end = True
                    raise response_error(resp.status, resp.headers, raw, resp.charset)
                if "text/event-stream" not in resp.headers.get("content-type", ""):
                    raw = await resp.read()
                    read_to_end = True
                    for event in decoder.whole_body(raw):
                        yield event
                    return
                # read to the end of the body even after [DONE], so the connection goes back to the pool
                lines = SseLineSplitter()
                async for chunk in resp.content.iter_any():  # all that arrived since the last read
                    unflushed = False
                    for line in lines.feed(chunk):
                        for event in decoder.sse_line(line):
                            unflushed = True
                            yield event
                    if unflushed:  # the next read may wait: what this one gave can go out together
                        yield FLUSH
                read_to_end = True
                for line in lines.close():
                    for event in decoder.sse_line(line):
                        yield event
            finally:
                if read_to_end:
                    resp.release()  # back to the pool
                else:
                    resp.close()  # the consumer left or the stream failed: cut it, the upstream stops its work
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise self._wire_error(exc) from exc
        for event in decoder.close():
            yield event


    # ---- tokens --------------------------------------------------------------------------------------

    @property
    def auth_headers(self) -> dict[str, str]:
        """The headers that carry the upstream's key (none without one), for other calls to the same server."""
        return self._headers

    @property
    def root_url(self) -> str:
        """Where the upstream's own endpoints live (vLLM's ``/tokenize``): the base URL without its ``/v1``."""
        return self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url

    async def count_prompt(self, request: GenerationRequest, *, token_strs: bool = False) -> Optional[PromptCount]:
        """The upstream's ``POST /tokenize`` (exact: its own tokenizer and template, on the messages and tools
        :meth:`build_payload` would send), or ``None`` (an estimate, a layer up) where it has none: a 404 is
        remembered, and the upstream not asked again."""
        model = self.upstream_model or request.served_model
        chat = None if request.raw_prompt is not None else self.build_payload(request)
        answer = await self._token_call("/tokenize", tokenize_payload(request, model, chat, token_strs))
        if answer is None:
            return None
        tokens, limit, strs = read_tokenize_answer(answer)
        return PromptCount(len(tokens), True, tokens, limit, strs if token_strs else None)

    async def detokenize(self, model: str, tokens: list[int]) -> Optional[str]:
        answer = await self._token_call("/detokenize", {"model": self.upstream_model or model, "tokens": tokens})
        return None if answer is None else read_detokenize_answer(answer)

    async def _token_call(self, path: str, body: dict[str, Any]) -> Optional[Any]:
        """One JSON call to a token endpoint at the upstream's root: its JSON answer, ``None`` where it has no
        such endpoint (remembered), our error for any other failure (a 400 of its own stays a 400)."""
        if path in self._missing:
            return None
        session = self._session
        if session is None:
            raise ServiceUnavailableError("the upstream engine is not started", retry_after=1)
        try:
            async with session.post(f"{self.root_url}{path}", data=dumps(body), headers=self._post_headers,
                                    allow_redirects=False) as resp:
                status, raw = resp.status, await resp.read()
                if _no_such_endpoint(status, raw):
                    self._missing.add(path)
                    log.info("upstream %s has no %s (HTTP %d): token counts are estimated", self.display_url,
                             path, status)
                    return None
                if status >= 400:
                    raise response_error(status, resp.headers, raw, resp.charset)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise self._wire_error(exc, path) from exc
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise UpstreamError(f"the upstream's {path} answered with a body that is not JSON") from exc

    def _wire_error(self, exc: BaseException, path: str = "") -> UnimodelError:
        """Our error for a failure on the wire to the upstream: the client gets our words; where the upstream is
        and what went wrong go to our log."""
        where = f" {path}" if path else ""
        if isinstance(exc, (aiohttp.ServerTimeoutError, asyncio.TimeoutError)):
            name = _timeout_name(exc)
            log.warning("upstream %s timed out%s: %s (%s)", self.display_url, where, name, _shown(exc))
            return UpstreamTimeoutError(f"the upstream did not answer{where} in time ({name})")
        if isinstance(exc, aiohttp.ClientConnectorError):
            log.warning("cannot connect to the upstream at %s: %s", self.display_url, _shown(exc))
            return UpstreamConnectionError("cannot connect to the upstream")
        log.warning("the connection to upstream %s failed: %s: %s", self.display_url, type(exc).__name__,
                    _shown(exc))
        return UpstreamError("the upstream connection failed")


def _no_such_endpoint(status: int, raw: bytes) -> bool:
    """The upstream has no such endpoint: 405 or 501, or a 404 that is not an error object of its API (vLLM
    answers an unknown model with a 404 ``{"error": …}``, which is the request's failure, not the endpoint's)."""
    if status in (405, 501):
        return True
    if status != 404:
        return False
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return True
    return not (isinstance(body, dict) and isinstance(body.get("error"), dict))


def _continued(spent: Usage, more: Usage) -> Usage:
    """Usage over a call cut at the thinking budget and its continuation: the prompt is the request's (the
    continuation's prompt re-reads it with the thinking), the output is the thinking plus the answer."""
    return Usage(prompt_tokens=spent.prompt_tokens,
                 completion_tokens=spent.completion_tokens + more.completion_tokens,
                 reasoning_tokens=spent.reasoning_tokens + more.reasoning_tokens,
                 estimated=spent.estimated or more.estimated, cached_tokens=spent.cached_tokens)


def upstream_session(max_connections: int, timeout: aiohttp.ClientTimeout, *, https: bool) -> aiohttp.ClientSession:
    """A session to talk to upstreams (see the module docstring for why each setting): an engine's own, or the
    one an upstream pool's replicas share (``https``: the system's trust, for replicas behind TLS)."""
    tls: ssl.SSLContext | bool = client_context(trust_env=True) if https else True
    connector = aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=KEEPALIVE_S, ssl=tls)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False,
                                 cookie_jar=aiohttp.DummyCookieJar(), raise_for_status=False)


def _timeouts(connect_s: float, read_s: float) -> aiohttp.ClientTimeout:
    """Connect (a new connection, or the wait for a pooled one) within ``connect_s``, no silence between reads
    longer than ``read_s``, no bound on the whole answer."""
    return aiohttp.ClientTimeout(total=None, connect=connect_s, sock_connect=connect_s, sock_read=read_s)


def _timeout_name(exc: BaseException) -> str:
    """Which timeout fired, in the names clients have seen in our messages (httpx's)."""
    return "ConnectTimeout" if isinstance(exc, aiohttp.ConnectionTimeoutError) else "ReadTimeout"


def _shown(exc: BaseException) -> str:
    """An aiohttp error's text for our log: it may quote the request URL (credentials masked) and what the
    upstream sent on the wire (control characters escaped, bounded)."""
    return printable(mask_urls_in(str(exc)), 1000)
