"""The embedded engine: a transformers model in this process, batched across requests.

The event loop never runs the model: :meth:`LocalEngine.start` loads in a worker thread, and generation runs
in the scheduler's thread (:mod:`.scheduler`), which hands each step's tokens back through
``loop.call_soon_threadsafe``. ``generate`` renders the request, checks it before any work (context length →
400, images for a text-only model → 400, more KV cache than the whole ``--kv-memory-gb`` budget holds → 400,
a full queue → 503 with ``Retry-After``; one that fits the budget but not beside the running ones waits, up to
``--queue-timeout``), submits it with its per-request logit hooks (thinking budget, presence/frequency penalties, and llguidance grammars for JSON mode
and forced tool calls: :mod:`.hooks`, :mod:`.grammar`), and turns tokens into events (:mod:`.output`).
Closing the generator (client gone, task cancelled) marks the sequence cancelled, and the scheduler frees its
slot and cache before its next step.

Everything in which model families differ comes from the model's format (``formats/``): the renderer, the
markers' token ids (for the output parser, the thinking budget, banning tool calls), the grammar pieces, and
whether the prompt already opened the thinking. This module never names a marker.

``logprobs``/``top_logprobs``: the scheduler computes them only for the requests that ask, from the model's
own distribution before any logit hook, penalty, temperature or top-k/top-p (vLLM's default
``--logprobs-mode raw_logprobs``; unlike vLLM, a grammar's mask is not applied to them either), one entry for
every generated token the answer counts (thinking, markers, tool calls and the stop token included, as vLLM).
``priority`` is not read: requests are admitted first come, first served.

Not supported (400 ``unsupported_feature``): JSON mode together with a forced tool call; a
thinking budget, or a forced tool call, where the model's tokenizer lacks the family's markers as single
tokens (the 400 names the family).
Sampling defaults when a request omits them: the checkpoint's generation_config if it samples, else
temperature 1 and top_p 1 (OpenAI's defaults). ``top_k`` and ``stop_token_ids`` are read from the request's
extra fields, as vLLM does.

No state is bound to one event loop, so one engine can serve callers on different loops.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from unimodel.engines.base import Engine, GenerationRequest, PromptCount, StartProgress
from unimodel.engines.local.cpu_threads import apply_cpu_threads
from unimodel.engines.local.grammar import GrammarCompiler
from unimodel.engines.local.hooks import BanTokens, RepetitionPenalties, ThinkingBudget
from unimodel.engines.local.images import at_least_two_image_tokens, pixel_inputs, resolve_images
from unimodel.engines.local.kv_budget import KvBudget, budget_bytes, bytes_per_token
from unimodel.engines.local.load_progress import LoadProgress
from unimodel.engines.local.mailbox import Item, Mailbox
from unimodel.engines.local.loader import LoadedModel, load_model
from unimodel.engines.local.output import OutputAssembler
from unimodel.engines.local.sampling import SamplingParams
from unimodel.engines.local.scheduler import BatchScheduler, cache_kwarg
from unimodel.engines.local.sequence import LogitsHook, SequenceRequest, StopReason, TokenLogprobs
from unimodel.errors import (
    ContextLengthExceededError,
    InvalidRequestError,
    OverloadedError,
    ServiceUnavailableError,
    UnimodelError,
    UnsupportedFeatureError,
)
from unimodel.formats.base import FormatMarkers, ModelFormat
from unimodel.formats.grammar import ThinkingMode, build_grammar, json_answer
from unimodel.formats.plain import PlainTextParser
from unimodel.formats.render import PromptRenderer, RenderedPrompt, has_images
from unimodel.images.decode import DEFAULT_LIMITS, ImageLimits
from unimodel.models.tiny_random import tiny_note
from unimodel.protocol.events import FLUSH, Event, Logprobs, ThinkingBudgetReached, TokenLogprob, TopLogprob
from unimodel.protocol.openai import ModelCard, NamedToolChoice, ResponseFormat

log = logging.getLogger("unimodel.local")



class LocalEngine(Engine):
    kind = "local"

    def __init__(
        self,
        model: str,
        *,
        served_model_name: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        max_model_len: int | None = None,
        max_num_seqs: int = 16,
        max_queue: int = 64,
        queue_timeout_s: float = 60.0,
        max_prefill_tokens: int = 512,
        kv_memory_gb: float | None = None,
        kv_cuda_fraction: float = 0.9,
        cpu_threads: int | None = None,
        image_limits: ImageLimits = DEFAULT_LIMITS,
        model_family: str | None = None,
        cache_dir: Path | None = None,
        extra_hooks: Sequence[LogitsHook] = (),
    ) -> None:
        if max_num_seqs < 1 or max_queue < 0:
            raise ValueError("max_num_seqs must be >= 1 and max_queue >= 0")
        self.model_name = model
        self.served_model_name = served_model_name or model
        self.device, self.dtype = device, dtype
        self.requested_max_model_len = max_model_len
        self.max_num_seqs, self.max_queue = max_num_seqs, max_queue
        self.queue_timeout_s = queue_timeout_s
        self.max_prefill_tokens = max_prefill_tokens
        self.kv_memory_gb, self.kv_cuda_fraction = kv_memory_gb, kv_cuda_fraction
        self.cpu_threads = cpu_threads  # None: the cores less one (see cpu_threads.py); CPU only
        self.image_limits = image_limits
        self.model_family = model_family
        self.cache_dir = cache_dir
        #: logit hooks run on every request before the engine's own (tests use them to steer a random model);
        #: a hook must keep no state across requests
        self.extra_hooks: list[LogitsHook] = list(extra_hooks)
        self._loaded: LoadedModel | None = None
        self._scheduler: BatchScheduler | None = None
        self._markers = FormatMarkers()
        self._eos: frozenset[int] = frozenset()
        self._mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Mailbox] = weakref.WeakKeyDictionary()
        self._progress: LoadProgress | None = None  # while start() runs

    # ---- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        progress = self._progress = LoadProgress(self.model_name)
        try:
            await self._start(progress)
        finally:
            self._progress = None  # started, failed or cancelled: /ready no longer shows a load

    def start_progress(self) -> StartProgress | None:
        progress = self._progress
        return progress.snapshot() if progress is not None and self._loaded is None else None

    async def _start(self, progress: LoadProgress) -> None:
        loaded = await asyncio.to_thread(
            load_model, self.model_name, device=self.device, dtype=self.dtype,
            max_model_len=self.requested_max_model_len, cache_dir=self.cache_dir, family=self.model_family,
            progress=progress,
        )
        self._format: ModelFormat = loaded.format
        threads = apply_cpu_threads(self.cpu_threads) if loaded.device.type == "cpu" else None
        gen_eos = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
        eos = set(loaded.renderer.eos_ids)
        eos.update([gen_eos] if isinstance(gen_eos, int) else gen_eos or [])
        self._eos = frozenset(eos)
        # the parser gets the marker ids; EOS ends generation and is never fed to it
        self._markers = self._format.markers(loaded.renderer, exclude=self._eos)
        self._defaults = _sampling_defaults(loaded.model)
        text_config = getattr(loaded.config, "text_config", None) or loaded.config
        self._grammar = GrammarCompiler(loaded.renderer, self._eos, int(text_config.vocab_size))
        new_cache = _cache_factory(loaded)
        progress.phase("warm-up", "one forward pass, measuring the KV cache per token")
        per_token = await asyncio.to_thread(bytes_per_token, loaded.model, new_cache, cache_kwarg(loaded.model),
                                            loaded.device)
        kv_budget = KvBudget.from_bytes(budget_bytes(self.kv_memory_gb, loaded.device, self.kv_cuda_fraction),
                                        per_token)
        self._scheduler = BatchScheduler(
            loaded.model, device=loaded.device, max_num_seqs=self.max_num_seqs,
            max_queue=self.max_queue, max_model_len=loaded.max_model_len, new_cache=new_cache,
            max_prefill_tokens=self.max_prefill_tokens, kv_budget=kv_budget,
        )
        self._scheduler.start()
        progress.finish()
        self._loaded = loaded
        log.info("local engine: %s from %s on %s (%s%s), model family %s, max_model_len %d, max_num_seqs %d, "
                 "KV budget %s", self.served_model_name, loaded.path, loaded.device, loaded.dtype,
                 f", {threads} CPU threads" if threads else "", self._format.name, loaded.max_model_len,
                 self.max_num_seqs, kv_budget.describe())
        if loaded.is_tiny_random:
            log.warning("%s is a built test checkpoint: %s", self.model_name, tiny_note(loaded.path))

    async def aclose(self) -> None:
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            await asyncio.to_thread(scheduler.stop)
        self._loaded = None

    def is_ready(self) -> bool:
        return self._loaded is not None and self._scheduler is not None

    def stats(self) -> dict[str, int] | None:
        if self._scheduler is None:
            return None
        stats = self._scheduler.stats()
        return {**stats, "max_sequences": self._scheduler.max_num_seqs}

    def models(self) -> list[ModelCard]:
        limit = self._loaded.max_model_len if self._loaded is not None else self.requested_max_model_len
        return [ModelCard(id=self.served_model_name, max_model_len=limit)]

    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            raise ServiceUnavailableError("the local engine is not started", retry_after=5)
        return self._loaded

    @property
    def scheduler(self) -> BatchScheduler:
        if self._scheduler is None:
            raise ServiceUnavailableError("the local engine is not started", retry_after=5)
        return self._scheduler

    @property
    def markers(self) -> FormatMarkers:
        """The model family's markers as token ids of the loaded tokenizer."""
        return self._markers

    @property
    def special_ids(self) -> dict[str, int]:
        """Marker text → token id, as the output parser gets them."""
        return dict(self._markers.by_text)

    @property
    def eos_ids(self) -> frozenset[int]:
        """The ids that end generation (the tokenizer's and the generation config's), known once started."""
        return self._eos

    # ---- generation ------------------------------------------------------------------------------------

    async def render(self, request: GenerationRequest) -> RenderedPrompt:
        """Prompt ids and images for ``request``; raises the 400s a request can earn before any work. A raw
        prompt is tokenized as it is (no chat template)."""
        loaded = self.loaded
        if request.raw_prompt is not None:
            raw = request.raw_prompt
            return RenderedPrompt(await asyncio.to_thread(loaded.renderer.encode_text, raw.text,
                                                          raw.add_special_tokens))
        images: dict[str, Any] | None = None
        if has_images(request.messages):
            if not loaded.supports_images:
                raise UnsupportedFeatureError(
                    f"the model '{self.served_model_name}' is text-only: it takes no images (remove the "
                    "image parts); for a small local model that does, serve --model tiny-random-vision",
                    param="messages")
            images = await resolve_images(request.messages, self.image_limits)
            images = {url: at_least_two_image_tokens(img, loaded.config) for url, img in images.items()}
        return await asyncio.to_thread(loaded.renderer.render, request, images)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        scheduler = self.scheduler
        loaded = self.loaded
        prompt = await self.render(request)
        n = len(prompt.token_ids)
        limit = loaded.max_model_len
        if n >= limit or (request.max_tokens is not None and n + request.max_tokens > limit):
            asked = f" + {request.max_tokens} for the completion" if request.max_tokens is not None else ""
            raise ContextLengthExceededError(
                f"This model's maximum context length is {limit} tokens; the messages take {n} tokens{asked}. "
                "Shorten the messages or lower max_tokens.", param="messages")
        params = self._sampling_params(request, n)
        raw = request.raw_prompt is not None  # its output is all content: no markers looked for
        opened = not raw and self._format.prompt_opens_thinking(prompt.token_ids, self._markers,
                                                                loaded.renderer.control_ids)
        hooks = await self.hooks_for(request, opened=opened)
        mailbox = self._mailbox(asyncio.get_running_loop())
        inbox: asyncio.Queue[Item] = asyncio.Queue()

        def sink(tokens: list[int], reason: StopReason | None, error: BaseException | None) -> None:
            mailbox.post(inbox, (tokens, reason, error))

        seq = SequenceRequest(prompt.token_ids, params, sink, prefill_inputs=pixel_inputs(prompt.images, self.loaded),
                              hooks=hooks, flush=mailbox.wake)
        if request.sampling.logprobs:
            seq.top_logprobs = request.sampling.top_logprobs or 0
        renderer = loaded.renderer
        out = OutputAssembler(
            PlainTextParser() if raw else self._format.new_parser(special_ids=self._markers.by_text,
                                                                  starts_in_reasoning=opened),
            loaded.renderer.new_detokenizer(), prompt_tokens=n, marker_ids=() if raw else self._markers.ids,
            end_ids=params.stop_token_ids,
            stop_strings=list(request.sampling.stop),
        )
        scheduler.submit(seq)
        try:
            reason: StopReason | None = None
            unflushed = False
            received = 0  # tokens received so far: the index of the next one's entry in seq.logprobs
            while reason is None and not out.stopped:
                tokens, reason, error = await self._next_item(inbox, seq)
                if error is not None:
                    if isinstance(error, UnimodelError):
                        raise error
                    log.error("request %s failed in the model: %s: %s", request.completion_id,
                              type(error).__name__, error)
                    raise UnimodelError("generation failed in the model; the error is logged") from error
                for token in tokens:
                    counted = not out.stopped  # a token after a stop string is neither counted nor shown
                    for event in out.feed(token):
                        unflushed = True
                        yield event
                    if seq.top_logprobs is not None and counted:
                        unflushed = True
                        yield Logprobs((token_logprob(renderer, token, seq.logprobs[received]),),
                                       out.thinking_token)
                    received += 1
                if unflushed and inbox.empty():  # caught up with the scheduler: what we have goes out now
                    unflushed = False
                    yield FLUSH
            budget = next((h for h in hooks if isinstance(h, ThinkingBudget)), None)
            if budget is not None and budget.forced:
                yield ThinkingBudgetReached(out.reasoning_tokens)
            for event in out.finish(reason or "stop"):
                yield event
        finally:
            if not seq.done:
                scheduler.cancel(seq)

    async def count_prompt(self, request: GenerationRequest, *, token_strs: bool = False) -> PromptCount:
        """Exact: the prompt rendered by the same code as :meth:`generate` (images fetched and encoded too, so
        their tokens count)."""
        prompt = await self.render(request)
        ids = prompt.token_ids
        strs = await asyncio.to_thread(self.loaded.renderer.token_strs, ids) if token_strs else None
        return PromptCount(len(ids), True, ids, self.loaded.max_model_len, strs)

    async def detokenize(self, model: str, tokens: list[int]) -> str:
        renderer = self.loaded.renderer
        vocab = renderer.vocab_size
        bad = next((i for i, t in enumerate(tokens) if not 0 <= t < vocab), None)
        if bad is not None:
            raise InvalidRequestError(f"tokens[{bad}] ({tokens[bad]}) is not a token id of this model "
                                      f"(0 to {vocab - 1})", param="tokens")
        return await asyncio.to_thread(renderer.decode, tokens)

    async def _next_item(self, inbox: asyncio.Queue[Item], seq: SequenceRequest) -> Item:
        """The next result; while ``seq`` still waits for a slot, at most ``queue_timeout_s`` (then 503)."""
        if seq.admitted or not inbox.empty():
            return await inbox.get()
        try:
            return await asyncio.wait_for(inbox.get(), self.queue_timeout_s)
        except asyncio.TimeoutError:  # the builtin TimeoutError only from Python 3.11
            if seq.admitted:  # took a slot just now: prefill under way, so wait for it
                return await inbox.get()
            raise OverloadedError(
                f"the server is busy: no slot or KV cache room freed up within {self.queue_timeout_s:g} s "
                "(--queue-timeout); retry later", retry_after=max(1.0, self.queue_timeout_s / 4)) from None

    def _mailbox(self, loop: asyncio.AbstractEventLoop) -> Mailbox:
        box = self._mailboxes.get(loop)
        if box is None:
            box = self._mailboxes[loop] = Mailbox(loop)
        return box

    def _sampling_params(self, request: GenerationRequest, prompt_len: int) -> SamplingParams:
        opts = request.sampling
        unsupported = [name for name in ("min_p", "min_tokens", "logit_bias", "include_stop_str_in_output")
                       if getattr(opts, name)]
        if opts.repetition_penalty not in (None, 1.0):
            unsupported.append("repetition_penalty")
        if unsupported:  # refused, never silently ignored
            raise UnsupportedFeatureError(f"the local engine does not support {unsupported[0]} yet",
                                          param=unsupported[0])
        temperature = opts.temperature if opts.temperature is not None else self._defaults["temperature"]
        top_p = opts.top_p if opts.top_p is not None else self._defaults["top_p"]
        top_k = opts.top_k if opts.top_k is not None else self._defaults["top_k"] or 0
        stop_ids = set() if opts.ignore_eos else set(self._eos)
        stop_ids.update(opts.stop_token_ids)
        room = self.loaded.max_model_len - prompt_len
        wanted = request.max_tokens
        if wanted is None:  # the server's default, clamped to the room the prompt leaves (never a 400)
            wanted = request.default_max_tokens or self._defaults["max_new_tokens"]
            budget = self.scheduler.kv_budget.tokens  # in the KV cache budget too, when there is one
            if budget is not None and budget > prompt_len:
                room = min(room, budget - prompt_len)
        max_new = min(wanted, room) if wanted is not None else room
        return SamplingParams(max_new_tokens=max_new, temperature=float(temperature), top_p=float(top_p),
                              top_k=max(0, top_k), seed=opts.seed, stop_token_ids=frozenset(stop_ids))

    async def hooks_for(self, request: GenerationRequest, *, opened: bool = False) -> list[LogitsHook]:
        """The logit hooks ``request`` runs with, in order: :attr:`extra_hooks`, the thinking budget and
        penalties, then the grammar (JSON mode, forced or forbidden tool calls). ``opened``: the prompt already
        opened the thinking. Raises the 400s of a feature the model cannot enforce."""
        return [*self.extra_hooks, *self._hooks(request, opened=opened),
                *await self._grammar_hooks(request, opened=opened)]

    async def _grammar_hooks(self, request: GenerationRequest, *, opened: bool = False) -> list[LogitsHook]:
        """Constrained decoding: JSON mode, and tool calls when ``tool_choice`` demands or forbids them.

        The grammar lets the model think first when it was told to (``model_effort`` high), and must let it
        finish its thinking when the prompt ``opened`` it.
        """
        fmt, markers = self._format, self._markers
        choice, tools = request.tool_choice, request.tools or []
        response_format = request.response_format
        json_mode = response_format is not None and response_format.type != "text"
        forced = bool(tools) and (choice == "required" or isinstance(choice, NamedToolChoice))
        if json_mode and forced:
            raise UnsupportedFeatureError("response_format JSON modes cannot be combined with a tool_choice that "
                                          "forces a tool call", param="response_format")
        mode: ThinkingMode = "opened" if opened else "optional" if request.thinks else "off"
        if json_mode:
            assert response_format is not None
            grammar = build_grammar(json_answer(_response_schema(response_format)), fmt.thinking_grammar(markers),
                                    mode, self._eos)
            return [await asyncio.to_thread(self._grammar.hook, grammar, "response_format")]
        if forced:
            named = isinstance(choice, NamedToolChoice)
            names = [choice.function.name] if isinstance(choice, NamedToolChoice) else [t.function.name for t in tools]
            schemas = {t.function.name: t.function.parameters or {"type": "object"} for t in tools}
            rules = fmt.tool_call_grammar(markers, [(name, schemas[name]) for name in names],
                                          at_most_one=named or request.parallel_tool_calls is False)
            if rules is None:
                asked = f"'{choice}'" if isinstance(choice, str) else "naming a function"
                raise UnsupportedFeatureError(
                    f"tool_choice {asked} cannot be enforced for this model: the {fmt.name} model family's "
                    "tool-call markers are not single tokens in its tokenizer; use tool_choice 'auto'",
                    param="tool_choice")
            grammar = build_grammar(rules, fmt.thinking_grammar(markers), mode, self._eos)
            return [await asyncio.to_thread(self._grammar.hook, grammar, "tool_choice")]
        if tools and choice == "none" and markers.tool_call is not None:
            # without a single-token call marker the parser reads no call from the token stream anyway
            return [BanTokens([markers.tool_call])]
        return []

    def _hooks(self, request: GenerationRequest, *, opened: bool = False) -> list[LogitsHook]:
        hooks: list[LogitsHook] = []
        if request.thinking_budget is not None:
            thinking = self._markers.thinking
            if thinking is None:
                raise UnsupportedFeatureError(
                    f"a thinking budget (thinking_budget, or a reasoning_effort that implies one) cannot be "
                    f"enforced for this model: the {self._format.name} model family's thinking markers are not "
                    "single tokens in its tokenizer", param="thinking_budget")
            hooks.append(ThinkingBudget(*thinking, request.thinking_budget, starts_inside=opened,
                                        uncounted=self._markers.ids))
        presence, frequency = request.sampling.presence_penalty or 0.0, request.sampling.frequency_penalty or 0.0
        if presence or frequency:
            text_config = getattr(self.loaded.config, "text_config", None) or self.loaded.config
            hooks.append(RepetitionPenalties(presence, frequency, int(text_config.vocab_size)))
        return hooks


def _finite(logprob: float) -> float:
    """A log probability JSON can carry: -inf (and NaN) as -9999.0, as vLLM does."""
    return logprob if logprob > -9999.0 else -9999.0


def token_logprob(renderer: PromptRenderer, token: int, entry: TokenLogprobs) -> TokenLogprob:
    """A generated token's entry for a ``Logprobs`` event, from the scheduler's (logprob, [(id, logprob) …]):
    each token's text is its bytes read as UTF-8 (a piece of a character as U+FFFD), its bytes the raw ones."""
    logprob, top = entry
    raw = renderer.token_bytes(token)
    alternatives = []
    for token_id, alt_logprob in top:
        alt = renderer.token_bytes(token_id)
        alternatives.append(TopLogprob(alt.decode("utf-8", "replace"), _finite(alt_logprob), tuple(alt)))
    return TokenLogprob(raw.decode("utf-8", "replace"), _finite(logprob), tuple(raw), tuple(alternatives))


def _response_schema(response_format: ResponseFormat) -> dict[str, Any]:
    """The JSON schema ``response_format`` asks for (``json_object``: any object)."""
    schema: Any = {"type": "object"}
    if response_format.type == "json_schema" and response_format.json_schema is not None:
        schema = response_format.json_schema.schema_ or schema
    if not isinstance(schema, dict):
        raise InvalidRequestError("response_format json_schema.schema must be an object", param="response_format")
    return schema


def _sampling_defaults(model: Any) -> dict[str, Any]:
    """The checkpoint's own defaults: sampling when its generation_config samples (else OpenAI's 1.0, 1.0),
    and its ``max_new_tokens`` for requests that give no max_tokens (else up to the context length)."""
    cfg = getattr(model, "generation_config", None)
    max_new = getattr(cfg, "max_new_tokens", None)
    out: dict[str, Any] = {"temperature": 1.0, "top_p": 1.0, "top_k": 0,
                           "max_new_tokens": max_new if isinstance(max_new, int) and max_new > 0 else None}
    if cfg is not None and getattr(cfg, "do_sample", False):
        out.update(temperature=cfg.temperature or 1.0, top_p=cfg.top_p or 1.0, top_k=cfg.top_k or 0)
    return out


def _cache_factory(loaded: LoadedModel) -> Any:
    from transformers import DynamicCache

    text_config = getattr(loaded.config, "text_config", None) or loaded.config
    return lambda: DynamicCache(config=text_config)
