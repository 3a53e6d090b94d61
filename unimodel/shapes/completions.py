"""The legacy text-completions API (``POST /v1/completions``) as a shape of the one pipeline.

A completions request is a raw prompt: the model reads it with no chat template and its answer is parsed for
nothing (vLLM's ``/v1/completions``). It becomes a chat request holding the prompt as a raw prompt
(:meth:`~unimodel.protocol.openai.ChatCompletionRequest.for_raw_prompt`: its ``messages`` hold the prompt as
one user message, so the route's rules see no tools and no images, the limits estimate its tokens, the request
log records it), which the validate stage makes the engine's raw-prompt request. So limits, quotas,
idempotency, the log and the metrics treat it exactly as chat.

Supported: one prompt (a string, or a list of one string), ``max_tokens`` (16 when absent, as OpenAI and vLLM),
``temperature``, ``top_p``, ``stop``, ``seed``, penalties, ``user``, ``stream`` (with
``stream_options.include_usage``), ``echo``, ``logprobs`` (where the engine gives them), vLLM's sampling
extensions and ``add_special_tokens``. Refused with a 400 naming the field: several prompts, token-id prompts,
``n``/``best_of`` above 1, ``suffix``, ``echo`` with ``logprobs`` (the prompt's own would be needed), and chat's
own fields (``messages``, ``tools`` …).

The answer is a ``text_completion`` (``choices[{text, index, logprobs, finish_reason}]``, ``usage``), or its
stream: ``data: {text_completion chunk}`` frames, the usage in a last frame with no choices when asked, and
``data: [DONE]``; an error mid-stream is an OpenAI error frame before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from pydantic import ValidationError

from unimodel.errors import InvalidRequestError, UnimodelError, UnsupportedFeatureError
from unimodel.protocol.completions import DEFAULT_MAX_TOKENS, OWN_FIELDS, SHARED_FIELDS, CompletionFields
from unimodel.protocol.events import ContentDelta, Event, Finish, Logprobs, TokenLogprob, Usage
from unimodel.protocol.openai import ChatCompletionRequest, RawPrompt
from unimodel.protocol.sse import DONE, frame
from unimodel.service.errors import validation_to_error
from unimodel.service.pipeline import StageState
from unimodel.service.shape import ApiShape

if TYPE_CHECKING:
    from unimodel.service.pipeline import Call


@dataclass(frozen=True, slots=True)
class _Asked:
    """What the answer's form needs of the request: the prompt, when ``echo`` puts it before the text."""

    echo: Optional[str]


_ASKED: StageState[_Asked] = StageState("completions.asked")


def completion_id(chat_id: str) -> str:
    """``cmpl-…`` (the API's prefix) for the request's ``chatcmpl-…`` id: the same request, the same hex."""
    return "cmpl-" + chat_id.removeprefix("chatcmpl-")


def _one_prompt(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if not prompt:
        raise InvalidRequestError("'prompt' must not be empty", param="prompt")
    if all(isinstance(p, str) for p in prompt):
        if len(prompt) > 1:
            raise UnsupportedFeatureError(f"one prompt per request (this one has {len(prompt)}): send each prompt "
                                          "as its own request", param="prompt")
        return str(prompt[0])
    raise UnsupportedFeatureError("token-id prompts are not supported: send the prompt as text", param="prompt")


class CompletionsShape(ApiShape):
    """``POST /v1/completions``."""

    name = "completions"

    async def to_chat(self, data: dict[str, Any], call: "Call") -> ChatCompletionRequest:
        try:
            own = CompletionFields.model_validate(data)
        except ValidationError as exc:
            raise validation_to_error(exc) from None
        prompt = _one_prompt(own.prompt)
        for name, value, ok in (("n", own.n, (None, 1)), ("best_of", own.best_of, (None, 1)),
                                ("suffix", own.suffix, (None,))):
            if value not in ok:
                raise UnsupportedFeatureError(f"'{name}' is not supported by this server's completions API",
                                              param=name)
        if own.echo and own.logprobs is not None:
            raise UnsupportedFeatureError("'echo' with 'logprobs' is not supported (it needs the prompt's "
                                          "log probabilities)", param="echo")
        chat_only = next((k for k in data if k in ChatCompletionRequest.model_fields and k not in SHARED_FIELDS
                          and k not in OWN_FIELDS), None)
        if chat_only is not None:
            raise InvalidRequestError(f"'{chat_only}' is a field of the chat completions API, not of completions",
                                      param=chat_only)
        rest = {k: v for k, v in data.items() if k not in OWN_FIELDS}  # shared fields, and unknown ones to judge
        if rest.get("max_tokens") is None:
            rest["max_tokens"] = DEFAULT_MAX_TOKENS
        if own.logprobs is not None:
            rest.update(logprobs=True, top_logprobs=own.logprobs)
        try:
            request = ChatCompletionRequest.for_raw_prompt(RawPrompt(prompt, own.add_special_tokens is not False),
                                                           rest)
        except ValidationError as exc:
            raise validation_to_error(exc) from None
        call.put(_ASKED, _Asked(prompt if own.echo else None))
        return request

    def body(self, completion: dict[str, Any], call: "Call") -> dict[str, Any]:
        echo = _echo(call)
        choice = completion["choices"][0]
        text = choice["message"].get("content") or ""
        logprobs = choice.get("logprobs")
        return {"id": completion_id(completion["id"]), "object": "text_completion", "created": completion["created"],
                "model": completion["model"],
                "choices": [{"index": 0, "text": echo + text, "finish_reason": choice.get("finish_reason"),
                             "logprobs": None if logprobs is None else _legacy(logprobs.get("content") or [],
                                                                               len(echo))}],
                "usage": _usage(completion.get("usage"))}

    def stream_writer(self, call: "Call") -> "CompletionStreamWriter":
        request = call.require_engine_request()
        wire = call.client_request
        return CompletionStreamWriter(completion_id(request.completion_id), request.served_model,
                                      call.created or 0, _echo(call),
                                      include_usage=bool(wire and wire.wants_usage_in_stream))


def _echo(call: "Call") -> str:
    asked = call.get(_ASKED)
    return asked.echo if asked is not None and asked.echo is not None else ""


def _usage(usage: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    if usage is None:
        return None
    return {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details")
            if usage.get(k) is not None}


def _legacy(entries: Sequence[dict[str, Any]], offset: int) -> dict[str, Any]:
    """Chat's ``logprobs.content`` entries as the legacy API's ``{tokens, token_logprobs, top_logprobs,
    text_offset}`` (offsets in characters from the start of the choice's text)."""
    out: dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for entry in entries:
        out["tokens"].append(entry["token"])
        out["token_logprobs"].append(entry["logprob"])
        out["top_logprobs"].append({a["token"]: a["logprob"] for a in entry.get("top_logprobs") or ()})
        out["text_offset"].append(offset)
        offset += len(entry["token"])
    return out


class CompletionStreamWriter:
    """``text_completion`` chunks: the echoed prompt first (with ``echo``), a chunk per write of text (with its
    tokens' log probabilities), one with the finish reason, the usage last when asked, ``[DONE]``."""

    __slots__ = ("id", "model", "created", "echo", "include_usage", "usage", "offset")

    def __init__(self, cmpl_id: str, model: str, created: int, echo: str, *, include_usage: bool) -> None:
        self.id, self.model, self.created = cmpl_id, model, created
        self.echo = echo
        self.include_usage = include_usage
        self.usage: Optional[Usage] = None
        self.offset = 0  # characters of text sent so far (the legacy logprobs' text_offset)

    def _chunk(self, text: str, finish: Optional[str] = None,
               logprobs: Optional[dict[str, Any]] = None) -> bytes:
        self.offset += len(text)
        return frame({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                      "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]})

    def opening(self, events: Sequence[Event]) -> bytes:
        head = self._chunk(self.echo) if self.echo else b""
        return head + self.write(events)

    def write(self, events: Sequence[Event]) -> bytes:
        out: list[bytes] = []
        text: Optional[str] = None  # a delta waiting for the Logprobs of its tokens
        for event in events:
            if isinstance(event, Logprobs):
                out.append(self._with_logprobs(text or "", event.tokens))
                text = None
                continue
            if text is not None:
                out.append(self._chunk(text))
                text = None
            if isinstance(event, ContentDelta):
                text = event.text
            elif isinstance(event, Finish):
                out.append(self._chunk("", event.reason))
            elif isinstance(event, Usage):
                self.usage = event
        if text is not None:
            out.append(self._chunk(text))
        return b"".join(out)

    def _with_logprobs(self, text: str, tokens: Sequence[TokenLogprob]) -> bytes:
        entries = [{"token": t.token, "logprob": t.logprob,
                    "top_logprobs": [{"token": a.token, "logprob": a.logprob} for a in t.top]} for t in tokens]
        return self._chunk(text, logprobs=_legacy(entries, self.offset))

    def closing(self, events: Sequence[Event], error: Optional[UnimodelError]) -> bytes:
        tail = self.write(events)
        if error is not None:
            tail += frame(error.to_dict())
        elif self.include_usage and self.usage is not None:
            u = self.usage
            usage: dict[str, Any] = {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                                     "total_tokens": u.total_tokens}
            if getattr(u, "cached_tokens", None) is not None:
                usage["prompt_tokens_details"] = {"cached_tokens": u.cached_tokens}
            tail += frame({"id": self.id, "object": "text_completion", "created": self.created,
                           "model": self.model, "choices": [], "usage": usage})
        return tail + DONE

    def result(self) -> Optional[dict[str, Any]]:
        return None


COMPLETIONS = CompletionsShape()
