"""Anthropic Messages ⇄ chat completions: the request into the one chat request, the completion into a Message.

**Request** (:func:`to_chat_request`, and :func:`count_tokens_chat_request` for ``count_tokens``):

* ``system`` (a string or text blocks, joined by a blank line) is the first message, a system one. A text block
  that starts with ``x-anthropic-billing-header`` is dropped, as vLLM does: Claude Code puts a per-request hash
  there, which would change the prompt's first tokens on every request and defeat any prefix cache;
* a user message's ``tool_result`` blocks become tool messages, first and in order (they answer the assistant
  message just before); what else the message holds (text, images, and the images of the tool results, which
  a tool message cannot carry) follows as one user message. ``is_error: true`` prefixes the result's text with
  ``Error: `` (a chat tool message has no such flag, and the model should know);
* an assistant message's ``tool_use`` blocks become its ``tool_calls`` (``input`` as JSON text), its
  ``thinking`` blocks its ``reasoning_content``; ``redacted_thinking`` is dropped (opaque: nothing of ours);
  a final assistant message is continued (``continue_final_message``), which is Anthropic's prefill;
* images: ``base64`` becomes a ``data:`` URI and ``url`` stays the URL, so the image stage checks and fetches
  both exactly as it does a chat image;
* ``thinking: {type: enabled, budget_tokens: N}`` asks for reasoning at ``low``, the lowest level that thinks,
  with ``thinking_budget: N``: the model thinks up to N tokens, and the request is charged at the level whose
  budget covers N (``formats/reasoning.py``: never below the level asked, so asking the lowest lets the budget
  alone decide); ``disabled`` is ``reasoning_effort: none``; ``adaptive`` (the model decides) is the
  effort of ``output_config.effort`` if any, else ``high`` (the model's own thinking, unbounded but for
  ``max_tokens``). ``output_config.effort`` alone sets the effort (``xhigh`` and ``max`` are our ``high``);
  neither: the server's default effort;
* ``stop_sequences`` → ``stop``, ``metadata.user_id`` → ``user``, ``tool_choice`` ``auto``/``any``/``tool``/
  ``none`` → ``auto``/``required``/the named function/``none``, ``disable_parallel_tool_use`` →
  ``parallel_tool_calls: false``, ``output_config.format`` → a JSON-schema ``response_format``; ``stream``
  asks for the usage in the stream (the Message's ``usage`` needs it) and reasoning is always included.

**Answer** (:func:`message_body`): the content blocks in the order the model wrote them: ``thinking``, then
``text``, then ``tool_use``. A thinking block's ``signature`` is :data:`SIGNATURE`, a constant: Anthropic's
signature lets its API check that thinking sent back was not altered, which matters there because the
model's thinking is hidden state; here the client may send any reasoning back (it is plain prompt text to the
model, like every other message), so there is nothing to protect and no key to sign with. vLLM sends a random
hex string per block. A ``tool_use`` block's ``input`` is the call's arguments parsed; arguments that are not
a JSON object (a call cut by ``max_tokens``: then ``stop_reason`` says ``max_tokens``) become ``{}``, logged,
as the block must hold an object. ``stop_reason``: ``stop`` → ``end_turn`` (a stop sequence cannot be told
apart from the model's own end: the engines' finish does not say which stop ended it, so ``stop_sequence`` is
always null), ``length`` → ``max_tokens``, ``tool_calls`` (or any answer with a call) → ``tool_use``,
``content_filter`` → ``refusal``.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Optional, Union

from unimodel.protocol import anthropic as wire
from unimodel.protocol.effort import Effort

log = logging.getLogger("unimodel.messages")

#: the ``signature`` of every thinking block this server writes (the module says why it signs nothing)
SIGNATURE = "unimodel-unsigned"
#: Claude Code's per-request attribution block in ``system`` (vLLM drops it too)
BILLING_HEADER = "x-anthropic-billing-header"

_EFFORTS: dict[str, Effort] = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                 "content_filter": "refusal"}
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


# ---- request ----------------------------------------------------------------------------------------------


def to_chat_request(req: wire.MessagesRequest) -> dict[str, Any]:
    """The chat request (as the JSON object :class:`~unimodel.protocol.openai.ChatCompletionRequest` validates)
    for a Messages request."""
    out = _prompt(req)
    out["max_tokens"] = req.max_tokens
    out["stream"] = req.stream
    if req.stream:
        out["stream_options"] = {"include_usage": True}
    if req.stop_sequences:
        out["stop"] = list(req.stop_sequences)
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(req, name)
        if value is not None:
            out[name] = value
    if req.metadata is not None and req.metadata.user_id:
        out["user"] = req.metadata.user_id
    return out


def count_tokens_chat_request(req: wire.CountTokensRequest) -> dict[str, Any]:
    """The chat request for a ``count_tokens`` request: the same prompt as :func:`to_chat_request` gives (the
    same messages, tools and reasoning, so the count is the count of what the model would be sent), no
    sampling; ``max_tokens`` 1, as a chat request for counting needs none."""
    out = _prompt(req)
    out["max_tokens"] = 1
    return out


def _prompt(req: wire._MessagesBase) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    system = _system_text(req.system)
    if system:
        messages.append({"role": "system", "content": system})
    for msg in req.messages:
        _convert_message(msg, messages)
    out: dict[str, Any] = {"model": req.model, "messages": messages, "include_reasoning": True}
    if req.messages[-1].role == "assistant":
        out["continue_final_message"] = True  # Anthropic's prefill: the answer continues that message
    _reasoning(req, out)
    if req.tools is not None:
        out["tools"] = [{"type": "function", "function": {
            "name": t.name, "description": t.description, "parameters": t.input_schema,
            **({"strict": t.strict} if t.strict is not None else {})}} for t in req.tools]
    choice = req.tool_choice
    if choice is not None:
        out["tool_choice"] = ({"type": "function", "function": {"name": choice.name}} if choice.type == "tool"
                              else _TOOL_CHOICES[choice.type])
        if choice.disable_parallel_tool_use:
            out["parallel_tool_calls"] = False
    if req.output_config is not None and req.output_config.format is not None:
        out["response_format"] = {"type": "json_schema",
                                  "json_schema": {"name": "response", "schema": req.output_config.format.schema_}}
    return out


def _reasoning(req: wire._MessagesBase, out: dict[str, Any]) -> None:
    thinking = req.thinking
    asked = req.output_config.effort if req.output_config is not None else None
    effort: Optional[Effort] = _EFFORTS[asked] if asked is not None else None
    if isinstance(thinking, wire.ThinkingDisabled):
        effort = "none"
    elif isinstance(thinking, wire.ThinkingEnabled):
        effort = effort or "low"
        out["thinking_budget"] = thinking.budget_tokens
    elif isinstance(thinking, wire.ThinkingAdaptive):
        effort = effort or "high"
    if effort is not None:
        out["reasoning_effort"] = effort


def _system_text(system: Union[str, list[wire.TextBlock], None]) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        return system
    return "\n\n".join(b.text for b in system if b.text and not b.text.startswith(BILLING_HEADER))


def _convert_message(msg: wire.Message, out: list[dict[str, Any]]) -> None:
    if isinstance(msg.content, str):
        out.append({"role": msg.role, "content": msg.content})
        return
    if msg.role == "assistant":
        out.append(_assistant(msg.content))
        return
    parts: list[dict[str, Any]] = []
    for block in msg.content:
        if isinstance(block, wire.ToolResultBlock):
            out.append(_tool_message(block, parts))
        elif isinstance(block, wire.TextBlock):
            if block.text:
                parts.append({"type": "text", "text": block.text})
        elif isinstance(block, wire.ImageBlock):
            parts.append(_image_part(block))
        # a tool_reference is dropped; the wire type refuses the other blocks in a user or system message
    if parts:
        out.append({"role": msg.role, "content": _content(parts)})
    elif not any(isinstance(b, wire.ToolResultBlock) for b in msg.content):
        out.append({"role": msg.role, "content": ""})  # only empty text: kept as a turn, as the client sent it


def _assistant(blocks: list[wire.ContentBlock]) -> dict[str, Any]:
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in blocks:
        if isinstance(block, wire.TextBlock):
            texts.append(block.text)
        elif isinstance(block, wire.ThinkingBlock):
            reasoning.append(block.thinking)
        elif isinstance(block, wire.ToolUseBlock):
            calls.append({"id": block.id, "type": "function",
                          "function": {"name": block.name, "arguments": json.dumps(block.input)}})
        # redacted_thinking (opaque) and tool_reference: dropped; the wire type refuses images and tool results
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["tool_calls"] = calls
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    return message


def _tool_message(block: wire.ToolResultBlock, images: list[dict[str, Any]]) -> dict[str, Any]:
    """The tool message of a ``tool_result``; its images go to ``images`` (the user message that follows)."""
    if isinstance(block.content, list):
        texts = []
        for part in block.content:
            if isinstance(part, wire.TextBlock):
                texts.append(part.text)
            elif isinstance(part, wire.ImageBlock):
                images.append(_image_part(part))
            # a tool_reference: dropped (the wire type says why)
        text = "\n".join(texts)
    else:
        text = block.content or ""
    if block.is_error:
        text = "Error: " + text
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}


def _image_part(block: wire.ImageBlock) -> dict[str, Any]:
    source = block.source
    if isinstance(source, wire.Base64Source):
        url = f"data:{source.media_type};base64,{source.data}"
    else:
        assert isinstance(source, wire.URLSource)  # the wire type refuses a Files API source
        url = source.url
    return {"type": "image_url", "image_url": {"url": url}}


def _content(parts: list[dict[str, Any]]) -> Union[str, list[dict[str, Any]]]:
    if len(parts) == 1 and parts[0]["type"] == "text":
        return str(parts[0]["text"])
    return parts


# ---- answer -----------------------------------------------------------------------------------------------


def message_id(completion_id: str) -> str:
    """The Message's id, from the chat completion's (``chatcmpl-<hex>`` → ``msg_<hex>``): the same request is
    the same id in the request log and the answer."""
    return "msg_" + completion_id.removeprefix("chatcmpl-")


def stop_reason(finish: Optional[str], called: bool) -> str:
    if called and finish in (None, "stop", "tool_calls"):
        return "tool_use"
    return _STOP_REASONS.get(finish or "stop", "end_turn")


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: Optional[int]) -> dict[str, int]:
    """Anthropic's usage: ``input_tokens`` are the prompt tokens not read from a cache (Anthropic counts the
    cached ones apart, in ``cache_read_input_tokens``); this server writes no cache of its own, so
    ``cache_creation_input_tokens`` is 0."""
    cached = min(cached_tokens or 0, prompt_tokens)
    return {"input_tokens": prompt_tokens - cached, "output_tokens": completion_tokens,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}


def tool_input(arguments: str, name: str) -> dict[str, Any]:
    """A call's arguments as the object a ``tool_use`` block holds; ``{}`` (logged) when they are not one."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        value = None
    if isinstance(value, dict):
        return value
    log.warning("the arguments of a call to %r are not a JSON object (%d characters); its tool_use input is {}",
                name[:64], len(arguments))
    return {}


def message_body(completion: dict[str, Any]) -> dict[str, Any]:
    """The Anthropic Message for a whole ``chat.completion`` body."""
    choice = completion["choices"][0]
    msg = choice["message"]
    content: list[dict[str, Any]] = []
    reasoning = msg.get("reasoning_content") or msg.get("reasoning")
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": SIGNATURE})
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    calls = msg.get("tool_calls") or []
    for call in calls:
        fn = call["function"]
        content.append({"type": "tool_use", "id": call["id"], "name": fn["name"],
                        "input": tool_input(fn["arguments"], fn["name"])})
    if not content:
        content.append({"type": "text", "text": ""})  # Anthropic's empty answer: one empty text block
    raw = completion.get("usage") or {}
    cached = (raw.get("prompt_tokens_details") or {}).get("cached_tokens")
    return {
        "id": message_id(completion["id"]),
        "type": "message",
        "role": "assistant",
        "model": completion["model"],
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason"), bool(calls)),
        "stop_sequence": None,
        "usage": usage(raw.get("prompt_tokens", 0), raw.get("completion_tokens", 0), cached),
    }
