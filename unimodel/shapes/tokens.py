"""The counting shapes: vLLM's ``POST /tokenize`` and ``POST /detokenize``, Anthropic's
``POST /v1/messages/count_tokens``. Each turns its body into the chat request the counting stages read
(``service/tokens.py``: auth, the key's requests, parse, route, validate, images) and puts what the count
needs besides in a stage state; the route writes the answer.

``/tokenize`` takes vLLM's two forms. The chat form (``messages``, ``tools``, ``continue_final_message``,
``reasoning_effort`` and ``route`` as in chat) counts the prompt chat would render for that request; its
``add_generation_prompt`` follows ``continue_final_message`` (the model either answers in a new turn or continues
the last message), and a template of the client's own (``chat_template``) or ``add_special_tokens: true`` on top of
the template is refused rather than ignored. The prompt form (``prompt``, ``add_special_tokens``, default true)
tokenizes the text as it is, as ``/v1/completions`` reads it. ``model`` may be left out (the served model).
Other vLLM fields (``chat_template_kwargs``, ``mm_processor_kwargs`` …) are not read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

from pydantic import ValidationError

from unimodel.errors import InvalidRequestError, UnsupportedFeatureError
from unimodel.protocol.openai import ChatCompletionRequest, RawPrompt
from unimodel.protocol.tokenize import DetokenizeRequest, TokenizeOptions
from unimodel.service.errors import validation_to_error
from unimodel.service.shape import ApiShape
from unimodel.service.tokens import DETOKENIZE, TOKEN_STRS
from unimodel.shapes.messages import MessagesShape

if TYPE_CHECKING:
    from unimodel.service.pipeline import Call

#: the chat form's fields that shape the rendered prompt, read as chat reads them
_CHAT_FIELDS = ("messages", "tools", "reasoning_effort", "thinking_budget", "route")


def _validated(model: type[Any], data: dict[str, Any]) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_to_error(exc) from None


class _DefaultModel(ApiShape):
    """A shape whose requests may leave ``model`` out: the served model (``default_model``) is meant."""

    def __init__(self, default_model: Callable[[], Optional[str]]) -> None:
        self.default_model = default_model

    def model(self, data: dict[str, Any]) -> Any:
        model = data.get("model")
        if model is None:
            model = self.default_model()
            if model is None:
                raise InvalidRequestError("'model' is required (no model is being served yet)", param="model")
        return model


class TokenizeShape(_DefaultModel):
    """``POST /tokenize``."""

    name = "tokenize"

    async def to_chat(self, data: dict[str, Any], call: "Call") -> ChatCompletionRequest:
        options: TokenizeOptions = _validated(TokenizeOptions, data)
        model = self.model(data)
        if "prompt" in data:
            if "messages" in data:
                raise InvalidRequestError("send either 'prompt' or 'messages', not both", param="prompt")
            prompt = data["prompt"]
            if not isinstance(prompt, str):
                raise InvalidRequestError("'prompt' must be a string", param="prompt")
            try:
                request = ChatCompletionRequest.for_raw_prompt(
                    RawPrompt(prompt, options.add_special_tokens is not False), {"model": model})
            except ValidationError as exc:
                raise validation_to_error(exc) from None
        else:
            if data.get("chat_template") is not None:
                raise UnsupportedFeatureError("a chat template of the request's own is not supported: the "
                                              "model's is used", param="chat_template")
            if options.add_special_tokens:
                raise UnsupportedFeatureError("'add_special_tokens': true is not supported with 'messages' (the "
                                              "chat template already adds the model's special tokens)",
                                              param="add_special_tokens")
            continuing = bool(options.continue_final_message)
            if options.add_generation_prompt is not None and options.add_generation_prompt == continuing:
                raise UnsupportedFeatureError(
                    "'add_generation_prompt' must be the opposite of 'continue_final_message': the model either "
                    "answers in a new turn or continues the last message", param="add_generation_prompt")
            chat = {k: data[k] for k in _CHAT_FIELDS if k in data}
            chat.update(model=model, continue_final_message=continuing or None)
            request = _validated(ChatCompletionRequest, chat)
        call.put(TOKEN_STRS, bool(options.return_token_strs))
        return request


class DetokenizeShape(_DefaultModel):
    """``POST /detokenize``: its chat request is an empty raw prompt, which names the model (the route and
    validate stages resolve it as for any request); the ids go in :data:`DETOKENIZE`."""

    name = "detokenize"

    async def to_chat(self, data: dict[str, Any], call: "Call") -> ChatCompletionRequest:
        asked: DetokenizeRequest = _validated(DetokenizeRequest, data)
        call.put(DETOKENIZE, asked.tokens)
        try:
            return ChatCompletionRequest.for_raw_prompt(RawPrompt("", False), {"model": self.model(data)})
        except ValidationError as exc:
            raise validation_to_error(exc) from None


class CountTokensShape(MessagesShape):
    """``POST /v1/messages/count_tokens``: the Messages request's prompt (no ``max_tokens``), counted; errors in
    Anthropic's shape."""

    name = "messages.count_tokens"

    async def to_chat(self, data: dict[str, Any], call: "Call | None" = None) -> ChatCompletionRequest:
        return self.count_tokens_chat(data)
