"""What the upstream engine sends and reads besides chat: a raw prompt's ``/v1/completions`` and the token
endpoints ``/tokenize`` and ``/detokenize`` (vLLM's, SGLang's).

A raw prompt (:attr:`GenerationRequest.raw_prompt`) goes to the upstream's legacy completions endpoint, which
reads it with no chat template and parses its output for nothing, as our local engine does; its answer, one
body or ``text_completion`` frames, is read by the chat decoder after each choice's ``text`` is put where a chat
choice keeps its content (:class:`TextCompletionDecoder`), so usage, errors, odd frames and flushing are the
chat path's, tested there.

Token counts come from the upstream's ``POST /tokenize`` (vLLM serves it at its root, beside ``/v1``): the chat
form carries the messages and tools exactly as :func:`~unimodel.engines.upstream_payload.build_payload` sends
them to ``/chat/completions``, with the reasoning level as a chat-template variable (vLLM's Mistral tokenizer
reads ``reasoning_effort`` there), so the count is the prompt the upstream would render for that request.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from unimodel.engines.base import GenerationRequest
from unimodel.engines.upstream_stream import UpstreamStreamDecoder
from unimodel.errors import UpstreamError
from unimodel.protocol.events import Event

#: what a chat payload carries into the chat form of ``/tokenize`` (the fields that change the rendered prompt)
_RENDER_FIELDS = ("messages", "tools", "continue_final_message", "add_generation_prompt")


def completion_payload(request: GenerationRequest, model: str) -> dict[str, Any]:
    """The upstream's ``/v1/completions`` request for a raw prompt: the same allowlist of typed fields as chat
    (plus the operator's ``upstream_extra_fields``), the prompt as it is."""
    raw = request.raw_prompt
    assert raw is not None
    payload: dict[str, Any] = dict(request.sampling.upstream_extra)
    payload.update(request.sampling.fields_set())
    logprobs, top = payload.pop("logprobs", None), payload.pop("top_logprobs", None)
    if logprobs:  # the legacy API's one field: how many alternatives, 0 for the sampled token's alone
        payload["logprobs"] = top or 0
    payload["model"] = model
    payload["prompt"] = raw.text
    payload["stream"] = request.streamed
    if request.streamed:
        payload["stream_options"] = {"include_usage": True}
    max_tokens = request.max_tokens if request.max_tokens is not None else request.default_max_tokens
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    if request.user is not None:
        payload["user"] = request.user
    if not raw.add_special_tokens:  # vLLM's extension; sent only when it differs from its default
        payload["add_special_tokens"] = False
    return payload


def tokenize_payload(request: GenerationRequest, model: str, chat_payload: Optional[dict[str, Any]],
                     token_strs: bool) -> dict[str, Any]:
    """``/tokenize``'s body: the prompt form for a raw prompt, else the chat form built from the chat payload
    the same request would send (``chat_payload``)."""
    raw = request.raw_prompt
    body: dict[str, Any] = {"model": model}
    if raw is not None:
        body.update(prompt=raw.text, add_special_tokens=raw.add_special_tokens)
    else:
        assert chat_payload is not None
        body.update({k: chat_payload[k] for k in _RENDER_FIELDS if k in chat_payload})
        if chat_payload.get("reasoning_effort") is not None:
            body["chat_template_kwargs"] = {"reasoning_effort": chat_payload["reasoning_effort"]}
    if token_strs:
        body["return_token_strs"] = True
    return body


def read_tokenize_answer(body: Any) -> tuple[list[int], Optional[int], Optional[list[str]]]:
    """``/tokenize``'s answer: the token ids, the context length and the token strings (an answer that is not
    such an object is the upstream's fault: 502)."""
    if not isinstance(body, dict) or not isinstance(body.get("tokens"), list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in body["tokens"]):
        raise UpstreamError("the upstream's /tokenize answered without a list of token ids")
    limit = body.get("max_model_len")
    strs = body.get("token_strs")
    return (list(body["tokens"]), limit if isinstance(limit, int) and not isinstance(limit, bool) else None,
            [str(s) for s in strs] if isinstance(strs, list) else None)


def read_detokenize_answer(body: Any) -> str:
    if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
        raise UpstreamError("the upstream's /detokenize answered without a prompt")
    return str(body["prompt"])


class TextCompletionDecoder(UpstreamStreamDecoder):
    """A ``text_completion`` answer read as a chat answer: each choice's ``text`` as its content, its legacy
    ``logprobs`` (``tokens``/``token_logprobs``/``top_logprobs``) as chat's ``logprobs.content``. Never parsed
    for reasoning or tool calls."""

    def _frame(self, frame: dict[str, Any]) -> list[Event]:
        choices = frame.get("choices")
        if isinstance(choices, list):
            frame = {**frame, "choices": [_chat_choice(c, "delta") for c in choices]}
        return super()._frame(frame)

    def whole_response(self, body: dict[str, Any]) -> list[Event]:
        choices = body.get("choices")
        if isinstance(choices, list):
            body = {**body, "choices": [_chat_choice(c, "message") for c in choices]}
        return super().whole_response(body)


def _chat_choice(choice: Any, key: str) -> Any:
    if not isinstance(choice, dict) or key in choice:
        return choice
    out = {k: v for k, v in choice.items() if k not in ("text", "logprobs")}
    text = choice.get("text")
    out[key] = {"content": text} if isinstance(text, str) else {}
    logprobs = _chat_logprobs(choice.get("logprobs"))
    if logprobs is not None:
        out["logprobs"] = logprobs
    return out


def _chat_logprobs(legacy: Any) -> Optional[dict[str, Any]]:
    """The legacy per-choice logprobs as chat's ``{"content": [{token, logprob, top_logprobs}]}``."""
    if not isinstance(legacy, dict) or not isinstance(legacy.get("tokens"), list):
        return None
    values = legacy.get("token_logprobs")
    values = values if isinstance(values, list) else []
    tops = legacy.get("top_logprobs")
    tops = tops if isinstance(tops, list) else []
    content = []
    for i, token in enumerate(legacy["tokens"]):
        value = values[i] if i < len(values) else None
        top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        content.append({"token": str(token),
                        "logprob": value if isinstance(value, (int, float)) and math.isfinite(value) else -9999.0,
                        "top_logprobs": [{"token": str(k), "logprob": v} for k, v in top.items()
                                         if isinstance(v, (int, float))]})
    return {"content": content}
