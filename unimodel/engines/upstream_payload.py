"""The request an OpenAI-compatible upstream gets, built from the closed :class:`GenerationRequest`.

Split from :mod:`unimodel.engines.upstream` (which owns the connection, the stream and budgets): this module
only maps our validated request onto the upstream's JSON, and the prompt text we count when an upstream
reports no usage.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Optional

from unimodel.engines.base import GenerationRequest

#: what raw output is by default (vLLM's and SGLang's field); a model family may say otherwise
RAW_FIELDS: Mapping[str, Any] = {"skip_special_tokens": False}


def build_payload(request: GenerationRequest, model: str, *, raw_output: bool = True,
                  raw_fields: Mapping[str, Any] = RAW_FIELDS,
                  continue_from: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The upstream's request, built field by field from the validated request (an allowlist: nothing the
    client sent beyond the typed fields and the operator's ``upstream_extra_fields`` goes out).

    ``raw_output``: ask for the model's raw text (the fields ``raw_fields``, the model family's
    ``raw_output_fields``, where the operator's ``upstream_extra_fields`` do not set them) and normalise earlier
    thinking in the history; off for upstreams that parse themselves (hosted APIs get the messages untouched).
    ``continue_from``: an assistant prefix to continue (the thinking cut at its budget)."""
    messages = [_system_role(m.model_dump(mode="json", exclude_none=True, by_alias=True)) for m in request.messages]
    if raw_output:  # hosted APIs get the client's messages untouched
        messages = [_normalise_history(m) for m in messages]
    payload: dict[str, Any] = dict(request.sampling.upstream_extra)
    payload.update(request.sampling.fields_set())
    payload["model"] = model
    payload["messages"] = messages
    # A client that waits for the whole answer gets it from one body, unless the model is told to think: thinking
    # is watched for a budget, and counted exactly (one token a frame) where the upstream reports no count.
    streamed = request.streamed or request.thinks or request.thinking_budget is not None \
        or continue_from is not None
    payload["stream"] = streamed
    if streamed:
        payload["stream_options"] = {"include_usage": True}
    if request.tools:
        payload["tools"] = [t.model_dump(mode="json", exclude_none=True, by_alias=True) for t in request.tools]
    if request.tool_choice is not None:
        payload["tool_choice"] = request.tool_choice if isinstance(request.tool_choice, str) \
            else request.tool_choice.model_dump(mode="json", exclude_none=True)
    if request.parallel_tool_calls is not None:
        payload["parallel_tool_calls"] = request.parallel_tool_calls
    if request.response_format is not None:
        payload["response_format"] = request.response_format.model_dump(mode="json", exclude_none=True,
                                                                        by_alias=True)
    if request.user is not None:
        payload["user"] = request.user
    if request.priority is not None:  # set only where the caller's key allows it (the validate stage)
        payload["priority"] = request.priority
    max_tokens = request.max_tokens if request.max_tokens is not None else request.default_max_tokens
    if max_tokens is not None:
        payload["max_tokens"] = max_tokens
    if request.model_effort is not None:
        payload["reasoning_effort"] = request.model_effort
    if raw_output:
        for key, value in raw_fields.items():
            if key not in request.sampling.upstream_extra:
                payload[key] = value
        if request.thinking_budget is not None and streamed:
            # vLLM: usage in every frame, so a call we cut at the budget still reports its prompt tokens
            payload["stream_options"]["continuous_usage_stats"] = True
    if request.continue_final_message:  # assistant prefill: Mistral-style APIs read the message's `prefix`
        messages[-1]["prefix"] = True
    if continue_from is not None:
        if request.continue_final_message:  # the prefill and the thinking so far are one assistant message
            messages[-1] = _merged_prefix(messages[-1], continue_from)
        else:
            messages.append(continue_from)
    if request.continue_final_message or continue_from is not None:
        # vLLM/SGLang: continue the final assistant message, no new turn
        payload["continue_final_message"] = True
        payload["add_generation_prompt"] = False
    return payload


def prompt_text(payload: dict[str, Any]) -> str:
    """The prompt of an upstream call as plain text, to count when the upstream reports no usage."""
    parts: list[str] = [payload["prompt"]] if isinstance(payload.get("prompt"), str) else []  # a raw prompt's
    for m in payload.get("messages") or []:
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        for key in ("reasoning_content", "reasoning"):
            if isinstance(m.get(key), str):
                parts.append(m[key])
                break
        for call in m.get("tool_calls") or []:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                parts.extend(str(fn.get(k) or "") for k in ("name", "arguments"))
    if payload.get("tools"):
        parts.append(json.dumps(payload["tools"], ensure_ascii=False))
    return "\n".join(parts)


def _merged_prefix(prefill: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """A client's assistant prefill with a continuation prefix (the thinking cut at its budget) merged in:
    ``more``'s content is appended to the prefill's, its other fields (the thinking) are added."""
    content, extra = prefill.get("content"), more.get("content") or ""
    if isinstance(content, list):
        content = [*content, {"type": "text", "text": extra}] if extra else content
    else:
        content = (content or "") + extra
    return {**prefill, **{k: v for k, v in more.items() if k not in ("role", "content")}, "content": content}


def _system_role(message: dict[str, Any]) -> dict[str, Any]:
    """``developer`` goes out as ``system``: OpenAI defines it as the system role for models that do not know it,
    and Mistral's tokenizer does not (vLLM answers 400 "Unknown message role: developer"; Codex CLI sends its
    instructions so). OpenAI's own API takes ``system`` for every model, so nothing is lost upstream."""
    return {**message, "role": "system"} if message.get("role") == "developer" else message


def _normalise_history(message: dict[str, Any]) -> dict[str, Any]:
    """Earlier thinking goes back under both names (vLLM reads ``reasoning``, SGLang ``reasoning_content``)."""
    if message.get("role") != "assistant":
        return message
    thinking = message.get("reasoning") or message.get("reasoning_content")
    if not thinking:
        return message
    return {**message, "reasoning": thinking, "reasoning_content": thinking}
