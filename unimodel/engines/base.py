"""The engine contract: what the service layer needs from anything that generates.

Every engine (in-process, OpenAI-compatible upstream, supervised vLLM) implements :class:`Engine` and passes
the same contract suite in ``tests/contract``. Engines only ever see a :class:`GenerationRequest`, the
validated form of a wire request, never raw JSON.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

from unimodel.protocol.effort import NO_THINKING
from unimodel.protocol.events import Event
from unimodel.protocol.openai import Message, ModelCard, RawPrompt, ResponseFormat, Tool, ToolChoice

@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """How tokens are picked, as the client asked (``None``: the engine's or the model's default).

    A closed set: the standard OpenAI fields plus vLLM's documented extensions. ``upstream_extra`` holds only
    the fields an operator allowlisted with ``upstream_extra_fields``, forwarded as-is to an upstream and
    ignored by the embedded engine.
    """

    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    seed: Optional[int] = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    repetition_penalty: Optional[float] = None
    min_tokens: Optional[int] = None
    ignore_eos: Optional[bool] = None
    include_stop_str_in_output: Optional[bool] = None
    logit_bias: Optional[Mapping[str, float]] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None
    upstream_extra: Mapping[str, Any] = field(default_factory=dict)

    def fields_set(self) -> dict[str, Any]:
        """The options the client set, by their wire names (for an upstream payload)."""
        out: dict[str, Any] = {}
        for name in _SAMPLING_WIRE_FIELDS:
            value = getattr(self, name)
            if value is None or value == ():
                continue
            out[name] = list(value) if isinstance(value, tuple) else dict(value) if isinstance(value, Mapping) \
                else value
        return out


_SAMPLING_WIRE_FIELDS = ("temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids",
                         "presence_penalty", "frequency_penalty", "repetition_penalty", "min_tokens", "ignore_eos",
                         "include_stop_str_in_output", "logit_bias", "logprobs", "top_logprobs")


@dataclass(frozen=True)
class GenerationRequest:
    """A validated chat request, resolved against the served model: the only thing engines see.

    It is a closed type (TGI's rule): no raw wire request rides along, so an engine forwards exactly these
    fields and nothing a client slipped in. ``max_tokens`` is the client's own limit (already checked against
    the context length); ``default_max_tokens`` is the server's fallback when the client gave none, which an
    engine that knows the prompt length clamps to the room the prompt leaves.
    ``completion_id`` is the response's id (``chatcmpl-…``), not the HTTP request's id.
    ``effort`` is the level the client asked for (or the served model's default); ``model_effort`` is what
    the model itself is told, one of the levels its format knows (``formats/reasoning.py``; ``none``: no
    thinking; ``None``: tell it nothing).
    ``thinking_budget`` (tokens, ``None`` = unbounded) is enforced by the engine: at the budget the thinking
    is closed and the model goes on to answer.
    ``continue_final_message``: the last message is an assistant message the model continues (Mistral's
    ``prefix: true``, vLLM's ``continue_final_message``); the output holds only the continuation.
    ``raw_prompt``: the prompt is this text as it is (the legacy completions API, ``/tokenize``'s prompt form):
    no chat template renders it (``messages`` then hold it as one user message, for the estimates), and the
    output is parsed for nothing, all of it content; ``model_effort`` is then ``None`` and ``tools`` empty.
    ``streamed``: the client reads the answer as it is made. When ``False`` an engine may make the answer in
    one piece: the upstream engine then asks its upstream for one JSON body (no per-token frames to relay),
    unless it must watch the thinking for a budget; a stage that must see the first token as it comes (a
    first-token timeout) sets it back to ``True``.
    ``n``: the choices asked for. Engines never see more than 1: the choices stage (``gateway/choices.py``) runs
    one generation per choice, each with ``n=1``.
    """

    completion_id: str
    served_model: str
    messages: list[Message]
    max_tokens: Optional[int] = None
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    tools: Optional[list[Tool]] = None
    tool_choice: Optional[ToolChoice] = None
    parallel_tool_calls: Optional[bool] = None
    response_format: Optional[ResponseFormat] = None
    user: Optional[str] = None
    default_max_tokens: Optional[int] = None
    effort: str = "none"
    model_effort: Optional[str] = None
    thinking_budget: Optional[int] = None
    include_reasoning: bool = True
    continue_final_message: bool = False
    connect_timeout_s: Optional[float] = None  # a route's own connect timeout; engines without one ignore it
    streamed: bool = True
    priority: Optional[int] = None  # vLLM's request priority, where the caller may set it (upstreams only)
    # how an upstream pool (engines/pool/) schedules it: who asked (the key's name; a saturated pool shares its
    # capacity fairly between tenants), its priority class as a rank (lower ranks are admitted first when the
    # pool is saturated), and the session a pool keeps on one replica (a prompt_cache_key, the completion id of
    # the answer this request continues, or the end user); engines without a pool ignore them
    tenant: Optional[str] = None
    priority_rank: int = 0
    affinity: Optional[str] = None
    raw_prompt: Optional[RawPrompt] = None
    n: int = 1

    @property
    def thinks(self) -> bool:
        """The model is told to think (a level other than ``none``)."""
        return self.model_effort is not None and self.model_effort != NO_THINKING

    @property
    def image_count(self) -> int:
        return sum(len(m.image_urls()) for m in self.messages)


@dataclass(frozen=True, slots=True)
class PromptCount:
    """The tokens of a prompt as the model would read it: ``count``, and ``tokens`` (their ids) where the engine
    has them. ``exact``: counted by the model's own tokenizer and renderer (else an estimate, and ``tokens`` is
    ``None``). ``max_model_len``: the context length, where the engine knows it. ``token_strs``: each token's
    text as the tokenizer spells it (asked for with ``token_strs=True``)."""

    count: int
    exact: bool
    tokens: Optional[list[int]] = None
    max_model_len: Optional[int] = None
    token_strs: Optional[list[str]] = None


@dataclass(frozen=True)
class StartProgress:
    """What an engine that is not serving yet is doing (for ``/ready``): ``summary`` says it in words ("the model
    is loading", "vLLM is starting"), ``phase`` names the step under way, ``elapsed_s`` counts from the start;
    ``done``/``total`` count the phase's units (safetensors shards) where it has any."""

    summary: str
    phase: str
    elapsed_s: float
    done: Optional[int] = None
    total: Optional[int] = None

    def reason(self) -> str:
        """One sentence for ``/ready``'s 503: ``the model is loading (phase weights, 2 of 8)``."""
        count = f", {self.done} of {self.total}" if self.done is not None and self.total else ""
        return f"{self.summary} (phase {self.phase}{count})"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"phase": self.phase, "elapsed_s": round(self.elapsed_s, 1)}
        if self.total:
            out.update(done=self.done or 0, total=self.total)
        return out


class Engine(abc.ABC):
    """An async text generator behind one or more served model names."""

    #: short label used in logs and metrics ("local", "upstream", "vllm")
    kind: str = "engine"

    @abc.abstractmethod
    async def start(self) -> None:
        """Acquire resources (load a model, open a pool, launch a child). Returns when started, not ready."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release everything; in-flight generations end."""

    @abc.abstractmethod
    def is_ready(self) -> bool:
        """True when a request sent now would be served."""

    async def check_health(self) -> bool:
        """A fresh look at whether this engine can serve, asked when requests fail (the resilience stage's
        circuit breaker asks it before one caller's failures may switch the engine off for everyone). By
        default what :meth:`is_ready` says; an engine that talks to a server asks that server. Never raises but
        for cancellation."""
        return self.is_ready()

    def stats(self) -> Optional[dict[str, int]]:
        """Gauges of the engine's own batch for metrics (``waiting``, ``running``, ``max_sequences``, ``steps``,
        ``tokens``), or ``None`` for an engine that keeps no batch of its own (an upstream's is its own)."""
        return None

    def start_progress(self) -> Optional[StartProgress]:
        """While the engine starts and cannot serve yet (a model loading, a child process starting): what it is
        doing, for ``/ready``; ``None`` once it serves, after a failed start, or for an engine that starts at
        once. Called on the event loop; must not block."""
        return None

    def pool_status(self) -> Optional[dict[str, Any]]:
        """An upstream pool's replicas, queue and choices (for ``/ready``, the metrics and the admin API), or
        ``None`` for an engine that is no pool."""
        return None

    @abc.abstractmethod
    def models(self) -> list[ModelCard]:
        """The served model names (the first is the default)."""

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        """Yield neutral events for one request, ending with exactly one ``Finish``.

        Every engine yields :class:`~unimodel.protocol.events.Flush` wherever it is about to wait (the end of
        one network read, of one decode step's tokens), never before its first other event and never twice in
        a row: a streamed answer goes out one write per ``Flush``, so events an engine holds back without one
        wait for its next ``Flush`` or its end (the rules: ``protocol/events.py``; the contract suite checks
        them). Raises a :class:`unimodel.errors.UnimodelError` before the first event for a request it refuses,
        or during iteration for a failure mid-way. Closing the iterator (client gone) cancels the work.
        """

    async def count_prompt(self, request: GenerationRequest, *, token_strs: bool = False) -> Optional[PromptCount]:
        """The prompt of ``request`` (its messages and tools rendered as :meth:`generate` renders them, or its
        ``raw_prompt`` tokenized as it is) counted exactly, or ``None`` where this engine cannot: the caller then
        estimates (``service/tokens.py``, with the usage estimator a layer up; engines never import it). Raises
        the 400s rendering raises (a conversation the model cannot take). By default: ``None``."""
        return None

    async def detokenize(self, model: str, tokens: list[int]) -> Optional[str]:
        """The text of ``tokens`` in ``model``'s tokenizer, or ``None`` where this engine cannot tell (no
        tokenizer of its own, an upstream without ``/detokenize``). An id outside the vocabulary is a 400. By
        default: ``None``."""
        return None
