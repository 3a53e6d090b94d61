"""The Responses API's translations: a request into the one chat request, and an answer into a Response object.

**Request → chat** (:func:`chat_payload`): ``instructions`` become a system message first; the ``input`` items
become chat messages in order. A message keeps its role (``developer`` stays ``developer``: the engines send it
as the system role Mistral's tokenizer knows); ``function_call`` items become the ``tool_calls`` of an assistant
message (consecutive calls, and assistant text right before them, merge into one assistant message, as a chat
client sends one turn; a call with a ``namespace`` is named ``<namespace>__<name>``, as the model saw the
namespace's function); a ``function_call_output`` becomes a ``tool`` message; a ``reasoning`` item's text (its
sealed ``encrypted_content`` opened by the shape's sealer, which wins: the client cannot have changed it; else its
content, else its summary) becomes the ``reasoning_content`` of the assistant message it precedes. The rest
maps field by field (``text.format`` is ``response_format``, ``reasoning.effort`` is ``reasoning_effort`` with
OpenAI's ``xhigh``/``max`` served as ``high``, ``max_output_tokens`` is ``max_completion_tokens``); a stream
always reports usage, since
``response.completed`` carries it. Reasoning comes back as reasoning items unless the operator's reasoning policy
hides it for the model (as it does for chat).

**Answer → Response** (:func:`response_object` over items made by :func:`reasoning_item`, :func:`message_item`,
:func:`function_call_item`): the streamed answer and the non-streamed one build their Response objects with
the same functions, so ``response.completed`` carries exactly what the non-streamed body would. Ids are derived
from the completion id (``chatcmpl-HEX`` → ``resp_HEX``, items ``rs_HEX_N``, ``msg_HEX_N``, ``fc_HEX_N`` with
``N`` the item's output index), so the request log, the chat id and an idempotent replay all agree. A call of a
namespace's function comes back as OpenAI (and vLLM) write it: ``name`` the function's own name, ``namespace``
the namespace's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from unimodel.errors import EncryptedContentError, InvalidRequestError
from unimodel.protocol.responses import (
    EXTRA_HIGH_EFFORTS,
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionToolChoice,
    InputImage,
    MessageItem,
    ReasoningItem,
    ResponsesRequest,
    part_text,
)

#: opens a reasoning item's ``encrypted_content`` into its text (the shape's sealer; None: left unread)
OpenSealed = Optional[Callable[[str], str]]

_CHAT_DETAILS = ("auto", "low", "high")


# ---- request → chat ------------------------------------------------------------------------------------


def chat_payload(request: ResponsesRequest, history: Sequence[Any] = (), open_sealed: OpenSealed = None
                 ) -> dict[str, Any]:
    """The chat-completions request (a JSON object, for :class:`ChatCompletionRequest`) of ``request``;
    ``history``: parsed input items that go before the request's own (a stored conversation). A client's
    mistake the wire types cannot see (an image in an assistant message) is an :class:`InvalidRequestError`."""
    messages: list[dict[str, Any]] = []
    if request.instructions:
        messages.append({"role": "system", "content": request.instructions})
    items: list[Any] = list(history)
    if isinstance(request.input, str):
        items.append(MessageItem(role="user", content=request.input))
    elif request.input:
        items.extend(request.input)
    messages.extend(_messages(items, open_sealed, len(history)))
    payload: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "stream": bool(request.stream),
        "max_completion_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "user": request.user or request.safety_identifier,
        "parallel_tool_calls": request.parallel_tool_calls,
        "thinking_budget": request.thinking_budget,
        "route": request.route,
        "seed": request.seed,
        "prompt_cache_key": request.prompt_cache_key,
    }
    if request.stream:
        payload["stream_options"] = {"include_usage": True}
    tools = request.function_tools
    if tools:
        payload["tools"] = [{"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True,
                                                                          by_alias=True)} for t in tools]
    choice = request.tool_choice
    if isinstance(choice, FunctionToolChoice):
        payload["tool_choice"] = {"type": "function", "function": {"name": _chosen(choice.name or "", request)}}
    elif choice is not None:
        payload["tool_choice"] = choice
    effort = request.reasoning.effort if request.reasoning else None
    if effort is not None:
        payload["reasoning_effort"] = "high" if effort in EXTRA_HIGH_EFFORTS else effort
    fmt = request.text.format if request.text else None
    if fmt is not None and fmt.type == "json_schema":
        spec = {"name": fmt.name or "response", "schema": fmt.schema_, "strict": fmt.strict,
                "description": fmt.description}
        payload["response_format"] = {"type": "json_schema",
                                      "json_schema": {k: v for k, v in spec.items() if v is not None}}
    elif fmt is not None and fmt.type == "json_object":
        payload["response_format"] = {"type": "json_object"}
    return {k: v for k, v in payload.items() if v is not None}


def _chosen(name: str, request: ResponsesRequest) -> str:
    """A tool_choice's function name as the model knows it: a namespace's function may be named by its own name
    when no other namespace has one of that name (vLLM's rule)."""
    names = request.namespaced_names
    if not names or name in names:
        return name
    flat = [f for f, (_, local) in names.items() if local == name]
    if len(flat) > 1:
        raise InvalidRequestError(f"tool_choice '{name}' is a function of more than one namespace "
                                  f"({', '.join(flat)}): name it as one of those", param="tool_choice")
    if len(flat) == 1 and not any(t.name == name for t in request.function_tools):
        return flat[0]
    return name


def _messages(items: list[Any], open_sealed: OpenSealed, offset: int = 0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    assistant: Optional[dict[str, Any]] = None  # the assistant message being gathered (text, calls, reasoning)
    reasoning: list[str] = []  # reasoning items waiting for the assistant message they precede

    def open_assistant() -> dict[str, Any]:
        nonlocal assistant
        if assistant is None:
            assistant = {"role": "assistant", "content": None}
            out.append(assistant)
        if reasoning:
            _append(assistant, "reasoning_content", "\n".join(reasoning))
            reasoning.clear()
        return assistant

    for i, item in enumerate(items):
        if isinstance(item, MessageItem) and item.role == "assistant":
            _append(open_assistant(), "content", _assistant_text(item.content, i))
        elif isinstance(item, FunctionCallItem):
            open_assistant().setdefault("tool_calls", []).append(
                {"id": item.call_id, "type": "function",
                 "function": {"name": item.flat_name, "arguments": item.arguments}})
        elif isinstance(item, ReasoningItem):
            try:
                text = _reasoning_text(item, open_sealed)
            except EncryptedContentError as exc:  # name the place in the client's own input
                exc.param = f"input[{i - offset}].encrypted_content" if i >= offset else "previous_response_id"
                raise
            if text and assistant is not None:
                _append(assistant, "reasoning_content", text)
            elif text:
                reasoning.append(text)
        else:  # a user, system or developer message, or a tool's output: the assistant's turn is over
            assistant = None
            reasoning.clear()  # reasoning that preceded no answer is left out
            if isinstance(item, FunctionCallOutputItem):
                out.append({"role": "tool", "tool_call_id": item.call_id, "content": _content(item.output)})
            else:
                out.append({"role": item.role, "content": _content(item.content)})
    return out


def _append(message: dict[str, Any], key: str, text: str) -> None:
    message[key] = text if not message.get(key) else message[key] + ("\n" if key != "content" else "") + text


def _assistant_text(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if any(isinstance(p, InputImage) for p in content):
        raise InvalidRequestError("An assistant message may not hold images.", param=f"input[{index}].content")
    return "".join(part_text(p) or "" for p in content)


def _content(content: Any) -> Any:
    """A message's or a tool output's content in chat's form: a string, or text and image_url parts."""
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for p in content:
        if isinstance(p, InputImage):
            image: dict[str, Any] = {"url": p.image_url}
            if p.detail in _CHAT_DETAILS:
                image["detail"] = p.detail
            parts.append({"type": "image_url", "image_url": image})
        else:
            parts.append({"type": "text", "text": part_text(p) or ""})
    return parts


def _reasoning_text(item: ReasoningItem, open_sealed: OpenSealed) -> str:
    if item.encrypted_content and open_sealed is not None:
        return open_sealed(item.encrypted_content)
    if item.content:
        return "".join(c.text for c in item.content)
    if item.summary:
        return "\n".join(s.text for s in item.summary)
    return ""


# ---- answer → Response ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResponseFrame:
    """What every Response object of one request shares: its ids, times and the request fields echoed."""

    response_id: str
    suffix: str  # the hex of the completion id: items are ``rs_{suffix}_{n}`` …
    created_at: int
    model: str
    echo: dict[str, Any]  # the request's fields as the Response object repeats them
    summary: bool  # the reasoning goes out as the reasoning item's summary (reasoning.summary asked)
    include_reasoning: bool = True  # False: the operator's policy hides the reasoning
    #: seals a reasoning item's text into its ``encrypted_content`` (None: not asked for, or no sealer)
    seal: Optional[Callable[[str], str]] = None
    #: ``<namespace>__<name>`` → (namespace, name): the namespaces' functions the model may call
    namespaced: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    def item_id(self, prefix: str, index: int) -> str:
        return f"{prefix}_{self.suffix}_{index}"

    def call_item(self, item_id: str, call_id: str, name: str, arguments: str,
                  status: str = "completed") -> dict[str, Any]:
        """A function_call item of a call the model made to ``name`` (a namespace's function: split again)."""
        namespace, local = self.namespaced.get(name, (None, name))
        return function_call_item(item_id, call_id, local, arguments, status, namespace)


def frame_for(completion_id: str, created_at: int, model: str, request: ResponsesRequest, effort: Optional[str],
              store: bool, include_reasoning: bool = True,
              seal: Optional[Callable[[str], str]] = None) -> ResponseFrame:
    suffix = completion_id.removeprefix("chatcmpl-")
    return ResponseFrame("resp_" + suffix, suffix, created_at, model, echo_fields(request, effort, store),
                         bool(request.reasoning and request.reasoning.wants_summary), include_reasoning, seal,
                         request.namespaced_names)


def echo_fields(request: ResponsesRequest, effort: Optional[str], store: bool) -> dict[str, Any]:
    """The request's fields as a Response object repeats them (defaults filled in as OpenAI's are)."""
    reasoning = request.reasoning
    summary = (reasoning.summary or reasoning.generate_summary) if reasoning else None
    fmt = request.text.format if request.text else None
    text: dict[str, Any] = {"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"},
                            "verbosity": (request.text.verbosity if request.text else None) or "medium"}
    choice = request.tool_choice
    return {
        "instructions": request.instructions,
        "tools": request.echoed_tools,
        "tool_choice": choice.model_dump(exclude_none=True) if isinstance(choice, FunctionToolChoice)
        else choice or "auto",
        "parallel_tool_calls": True if request.parallel_tool_calls is None else request.parallel_tool_calls,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_output_tokens": request.max_output_tokens,
        "max_tool_calls": request.max_tool_calls,
        "reasoning": {"effort": effort, "summary": summary},
        "text": text,
        "metadata": request.metadata or {},
        "store": store,
        "background": bool(request.background),
        "previous_response_id": request.previous_response_id,
        "truncation": request.truncation or "disabled",
        "user": request.user,
        "safety_identifier": request.safety_identifier,
        "prompt_cache_key": request.prompt_cache_key,
        "service_tier": "default",
        "top_logprobs": 0,
    }


def reasoning_item(frame: ResponseFrame, item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    """A reasoning item: the text as its ``reasoning_text`` content, or (a summary asked for) as its summary:
    this server has no separate summarizer, so the summary is the model's reasoning itself. Sealed into
    ``encrypted_content`` too when the frame seals."""
    sealed = frame.seal(text) if frame.seal is not None else None
    if frame.summary:
        return {"id": item_id, "type": "reasoning", "summary": [{"type": "summary_text", "text": text}],
                "content": None, "encrypted_content": sealed, "status": status}
    return {"id": item_id, "type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": text}],
            "encrypted_content": sealed, "status": status}


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": [output_text(text)]}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed",
                       namespace: Optional[str] = None) -> dict[str, Any]:
    item = {"id": item_id, "type": "function_call", "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}
    if namespace is not None:
        item["namespace"] = namespace
    return item


def usage_object(prompt: int, completion: int, reasoning: int, cached: Optional[int]) -> dict[str, Any]:
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached or 0, "cache_write_tokens": 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + completion}


#: a chat finish reason → the Response's status and ``incomplete_details.reason``
def status_of(finish_reason: Optional[str]) -> tuple[str, Optional[str]]:
    if finish_reason == "length":
        return "incomplete", "max_output_tokens"
    if finish_reason == "content_filter":
        return "incomplete", "content_filter"
    return "completed", None


def response_object(frame: ResponseFrame, *, status: str, output: list[dict[str, Any]],
                    usage: Optional[dict[str, Any]], incomplete_reason: Optional[str] = None,
                    error: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """The Response object (as the openai SDK's ``Response`` model reads it)."""
    return {
        "id": frame.response_id,
        "object": "response",
        "created_at": frame.created_at,
        "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": error,
        "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
        "model": frame.model,
        "output": output,
        "usage": usage,
        **frame.echo,
    }


def response_from_completion(frame: ResponseFrame, completion: dict[str, Any]) -> dict[str, Any]:
    """The non-streamed Response of a whole ``chat.completion``: its items in the order reasoning, message,
    function calls (the order a model writes them in; a stream lists them as they came)."""
    choice = completion["choices"][0]
    message = choice["message"]
    status, reason = status_of(choice.get("finish_reason"))
    output: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning and frame.include_reasoning:
        output.append(reasoning_item(frame, frame.item_id("rs", len(output)), reasoning))
    if message.get("content"):
        output.append(message_item(frame.item_id("msg", len(output)), message["content"]))
    for call in message.get("tool_calls") or ():
        output.append(frame.call_item(frame.item_id("fc", len(output)), call["id"], call["function"]["name"],
                                      call["function"]["arguments"]))
    if status == "incomplete" and output:
        output[-1]["status"] = "incomplete"
    usage = completion.get("usage")
    return response_object(frame, status=status, output=output, incomplete_reason=reason, usage=None if not usage else
                           usage_object(usage["prompt_tokens"], usage["completion_tokens"],
                                        (usage.get("completion_tokens_details") or {}).get("reasoning_tokens", 0),
                                        (usage.get("prompt_tokens_details") or {}).get("cached_tokens")))
