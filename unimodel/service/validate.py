"""Turn a parsed wire request into the engine's :class:`GenerationRequest` (the only thing engines see).

Model resolution and the reasoning-effort mapping live here: the model knows ``none`` and ``high``; clients
may send ``minimal``/``low``/``medium`` too, which map onto them with a thinking budget, by the served
model's :class:`ReasoningPolicy` (the README's "Reasoning effort" has the table). Engines enforce the budget.

A raw prompt (a shape's :attr:`ChatCompletionRequest.raw_prompt`: the legacy completions API, ``/tokenize``'s
prompt form) becomes ``GenerationRequest.raw_prompt``: no level is told the model (it reads no template), and the
request is charged as ``none``.

``priority`` (vLLM's request priority) reaches the engine only where the caller may set it: within its key's
``priority`` range (a value outside it is a 400 naming ``priority``), or, for a key without one (plain keys, no
keys), any value when the operator allows it (``--allow-priority``, or ``priority`` in the
``upstream_extra_fields`` allowlist, as before it was typed); otherwise it is dropped (logged at debug), so a
client written for vLLM, which sends it, still works.

The request's priority class (the ``X-Unimodel-Priority`` header, else its key's, else the server's default;
``service/priority.py`` has the rules) goes into the context and becomes ``priority_rank``; with the operator's
``pool_forward_priority`` its rank is vLLM's ``priority`` too, wherever the client sent no ``priority`` that
reaches the engine. ``tenant`` is the key's name; ``affinity`` the request's session (``priority.affinity_of``).

Assistant prefill (``prefix`` on the final message, or ``continue_final_message``) is checked here and
becomes ``GenerationRequest.continue_final_message`` (see :func:`_continue_final_message` for what is refused).

The served models are asked of the engine at most once a second (:attr:`ValidateStage.models_ttl_s`), not
per request: an engine builds its list on each call, and an upstream's only changes when its probe runs (every
few seconds). A name not in the remembered list, or an engine serving none yet, asks again at once, so a model
discovered since is served without waiting; a changed context length is seen within the second.

``n`` (choices) above the server's ``--max-n`` is a 400 naming ``n``; it reaches the engine request, where the
choices stage (``gateway/choices.py``) fans it out.

Unknown top-level fields are dropped (logged at debug), or refused with a 400 naming the field when the
operator sets ``unknown_fields: reject``; fields named in ``upstream_extra_fields`` are kept, as-is, for an
upstream.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Collection
from typing import Literal

from unimodel.engines.base import GenerationRequest, SamplingOptions
from unimodel.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    ServiceUnavailableError,
    UnsupportedFeatureError,
)
from unimodel.formats.reasoning import AppliedReasoning, ModelReasoning, ReasoningPolicy
from unimodel.formats.registry import get_format
from unimodel.protocol.openai import MAX_N, ChatCompletionRequest, ModelCard, NamedToolChoice
from unimodel.service.pipeline import Call, Stage
from unimodel.service.priority import PriorityClasses, affinity_of, priority_header

log = logging.getLogger("unimodel.validate")

UnknownFields = Literal["drop", "reject"]


def new_completion_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


#: the reasoning of a served model the settings say nothing about: Mistral's format, the default policy
DEFAULT_REASONING = ModelReasoning(ReasoningPolicy(), get_format("mistral"))


def resolve_model(name: str, models: list[ModelCard]) -> ModelCard:
    for card in models:
        if card.id == name:
            return card
    known = ", ".join(c.id for c in models) or "none"
    raise ModelNotFoundError(
        f"The model '{name}' does not exist on this server (served: {known}).", param="model"
    )


def to_generation_request(
    wire: ChatCompletionRequest,
    models: list[ModelCard],
    reasoning_for: Callable[[str], ModelReasoning] = lambda _: DEFAULT_REASONING,
    completion_id: str | None = None,
    default_max_tokens: int | None = None,
    *,
    unknown_fields: UnknownFields = "drop",
    upstream_extra_fields: Collection[str] = (),
) -> GenerationRequest:
    return _validated(wire, models, reasoning_for, completion_id, default_max_tokens, unknown_fields=unknown_fields,
                      upstream_extra_fields=upstream_extra_fields,
                      priority=allowed_priority(wire.priority, None, "priority" in upstream_extra_fields))[0]


def _validated(
    wire: ChatCompletionRequest,
    models: list[ModelCard],
    reasoning_for: Callable[[str], ModelReasoning],
    completion_id: str | None,
    default_max_tokens: int | None,
    *,
    unknown_fields: UnknownFields,
    upstream_extra_fields: Collection[str],
    priority: int | None = None,
    max_n: int = MAX_N,
    tenant: str | None = None,
    priority_rank: int = 0,
) -> tuple[GenerationRequest, AppliedReasoning]:
    """The engine's request and the reasoning applied to it (with the level it is charged at)."""
    extra = _extra_fields(wire, unknown_fields, upstream_extra_fields)
    card = resolve_model(wire.model, models)
    reasoning = reasoning_for(card.id)
    raw = wire.raw_prompt
    # a raw prompt is read with no template: the model is told no level, and is charged as not thinking
    applied = reasoning.apply(wire.reasoning_effort, wire.thinking_budget) if raw is None \
        else AppliedReasoning("none", None, None)
    max_tokens = wire.max_output_tokens
    if default_max_tokens is not None and card.max_model_len is not None:
        default_max_tokens = min(default_max_tokens, card.max_model_len)
    if card.max_model_len is not None and max_tokens is not None and max_tokens > card.max_model_len:
        raise InvalidRequestError(
            f"max_tokens ({max_tokens}) exceeds the model's context length ({card.max_model_len}).",
            param="max_tokens",
        )
    continue_final = raw is None and _continue_final_message(wire)
    if wire.n > max_n:
        raise InvalidRequestError(f"n ({wire.n}) is more than this server allows (at most {max_n} choices).",
                                  param="n")
    return GenerationRequest(
        completion_id=completion_id or new_completion_id(),
        served_model=card.id,
        messages=wire.messages,
        max_tokens=max_tokens,
        sampling=SamplingOptions(
            temperature=wire.temperature, top_p=wire.top_p, top_k=wire.top_k, min_p=wire.min_p, seed=wire.seed,
            stop=tuple(wire.stop_list), stop_token_ids=tuple(wire.stop_token_ids or ()),
            presence_penalty=wire.presence_penalty, frequency_penalty=wire.frequency_penalty,
            repetition_penalty=wire.repetition_penalty, min_tokens=wire.min_tokens, ignore_eos=wire.ignore_eos,
            include_stop_str_in_output=wire.include_stop_str_in_output, logit_bias=wire.logit_bias,
            logprobs=wire.logprobs, top_logprobs=wire.top_logprobs, upstream_extra=extra,
        ),
        tools=wire.tools,
        tool_choice=wire.tool_choice,
        parallel_tool_calls=wire.parallel_tool_calls,
        response_format=wire.response_format,
        user=wire.user,
        default_max_tokens=default_max_tokens,
        effort=applied.effort,
        model_effort=applied.model_effort,
        thinking_budget=applied.budget,
        include_reasoning=wire.include_reasoning if wire.include_reasoning is not None
        else reasoning.include_reasoning,
        continue_final_message=continue_final,
        streamed=bool(wire.stream),
        raw_prompt=raw,
        priority=priority,
        tenant=tenant,
        priority_rank=priority_rank,
        affinity=affinity_of(wire),
        n=wire.n,
    ), applied


def _continue_final_message(wire: ChatCompletionRequest) -> bool:
    """Whether the request continues its final assistant message (assistant prefill), checked.

    Asked for by Mistral's ``prefix: true`` on the final message or vLLM's top-level
    ``continue_final_message: true``. Refused (400): ``prefix`` on another message; the two fields
    contradicting each other; a final message that is not an assistant message or holds tool calls; together
    with a JSON ``response_format`` or a ``tool_choice`` that forces a call (their grammars start a new answer,
    which cannot continue a text).
    """
    messages = wire.messages
    for i, m in enumerate(messages[:-1]):
        if m.prefix:
            raise InvalidRequestError(f"only the last message may have 'prefix': true (messages[{i}] has it)",
                                      param="messages")
    last = messages[-1]
    if wire.continue_final_message is False and last.prefix:
        raise InvalidRequestError("continue_final_message is false but the last message has 'prefix': true",
                                  param="continue_final_message")
    if not (wire.continue_final_message or last.prefix):
        return False
    param = "continue_final_message" if wire.continue_final_message else "messages"
    if last.role != "assistant":
        raise InvalidRequestError(
            f"continuing the final message needs it to be an assistant message, not '{last.role}'", param=param)
    if last.tool_calls:
        raise InvalidRequestError("an assistant message with tool_calls cannot be continued", param=param)
    if wire.response_format is not None and wire.response_format.type != "text":
        raise UnsupportedFeatureError("continuing an assistant message cannot be combined with a JSON "
                                      "response_format", param="response_format")
    if wire.tools and (wire.tool_choice == "required" or isinstance(wire.tool_choice, NamedToolChoice)):
        raise UnsupportedFeatureError("continuing an assistant message cannot be combined with a tool_choice "
                                      "that forces a tool call", param="tool_choice")
    return True


def allowed_priority(asked: int | None, allowed: tuple[int, int] | None, allow_any: bool) -> int | None:
    """The priority that goes to the engine: ``asked`` within the key's range ``allowed`` (outside it: a 400),
    or with no range any value when ``allow_any``; otherwise None (dropped)."""
    if asked is None:
        return None
    if allowed is None:
        if not allow_any:
            log.debug("dropped the request priority: this caller may not set it")
            return None
        return asked
    low, high = allowed
    if not low <= asked <= high:
        raise InvalidRequestError(f"priority {asked} is outside what this key may use ({low} to {high})",
                                  param="priority")
    return asked


def _extra_fields(wire: ChatCompletionRequest, unknown_fields: UnknownFields,
                  allowed: Collection[str]) -> dict[str, object]:
    """The allowlisted extras; the rest dropped, or a 400 naming the first when the operator says reject.
    ``prompt_cache_key`` was one before it was typed (for the pool's affinity): allowlisted, it still goes."""
    extras = wire.model_extra or {}
    if wire.prompt_cache_key is not None and "prompt_cache_key" in allowed:
        extras = {**extras, "prompt_cache_key": wire.prompt_cache_key}
    if not extras:
        return {}
    kept = {k: v for k, v in extras.items() if k in allowed}
    unknown = [k for k in extras if k not in allowed]
    if unknown:
        if unknown_fields == "reject":
            raise InvalidRequestError(
                f"Unrecognized request argument supplied: {unknown[0]} (this server refuses unknown fields)",
                param=unknown[0][:128], code="unknown_field")
        log.debug("dropped unknown request fields: %s", ", ".join(k[:64] for k in unknown[:16]))
    return kept


class ValidateStage(Stage):
    """Resolves the served model and turns the wire request into the closed :class:`GenerationRequest`."""

    name = "validate"

    def __init__(self, models: Callable[[], list[ModelCard]],
                 reasoning_for: Callable[[str], ModelReasoning] = lambda _: DEFAULT_REASONING,
                 default_max_tokens: int | None = None, *, unknown_fields: UnknownFields = "drop",
                 upstream_extra_fields: Collection[str] = (), models_ttl_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, allow_priority: bool = False,
                 max_n: int = 8, priority_classes: PriorityClasses | None = None) -> None:
        self.models = models
        self.priority_classes = priority_classes or PriorityClasses()
        self.max_n = max_n
        self.reasoning_for = reasoning_for
        self.default_max_tokens = default_max_tokens
        self.unknown_fields: UnknownFields = unknown_fields
        self.upstream_extra_fields = frozenset(upstream_extra_fields)
        self.models_ttl_s = models_ttl_s
        # callers whose key sets no priority range may send any (an allowlisted `priority` did so before)
        self.allow_priority = allow_priority or "priority" in self.upstream_extra_fields
        self._clock = clock
        self._known: list[ModelCard] = []  # the engine's last non-empty answer…
        self._known_until = 0.0  # …trusted until then

    def served_models(self, name: str) -> list[ModelCard]:
        """The engine's models, remembered for ``models_ttl_s``; asked again at once when ``name`` is not among
        them or the engine served none."""
        now = self._clock()
        if now < self._known_until and any(card.id == name for card in self._known):
            return self._known
        models = self.models()
        self._known, self._known_until = models, (now + self.models_ttl_s if models else 0.0)
        return models

    async def enter(self, call: Call) -> None:
        wire = call.client_request
        if wire is None:
            raise InvalidRequestError("the request was not parsed")
        models = self.served_models(wire.model)
        if not models:
            raise ServiceUnavailableError("no model is being served yet: the engine is not ready", retry_after=2)
        default_max_tokens = self.default_max_tokens
        cap = call.route.max_tokens_cap if call.route is not None else None  # a route's or a key's cap
        if cap is not None:
            default_max_tokens = cap if default_max_tokens is None else min(default_max_tokens, cap)
        classes = self.priority_classes
        priority_class = call.ctx.priority_class = classes.choose(call.ctx.caller, priority_header(call.headers))
        rank = classes.ranks[priority_class]
        priority = allowed_priority(wire.priority, call.ctx.caller.priority, self.allow_priority)
        if priority is None and classes.forward:
            priority = rank
        request, applied = _validated(
            wire, models, self.reasoning_for, call.ctx.completion_id, default_max_tokens,
            unknown_fields=self.unknown_fields, upstream_extra_fields=self.upstream_extra_fields,
            priority=priority, max_n=self.max_n, tenant=call.ctx.key_name, priority_rank=rank)
        call.engine_request = request
        call.ctx.model = request.served_model
        call.ctx.reasoning = applied  # with the level it is charged at (the limits stage reads it)
