"""Requests to prompt token ids (and images), and the tokenizer facts the engine needs to read the output.

Two renderers behind one interface:

* :class:`MistralRenderer` -- checkpoints with a ``tekken.json``: ``mistral_common`` renders and tokenizes
  (never a hand-written Mistral template). Our wire messages go through mistral_common's own OpenAI converter
  (``ChatCompletionRequest.from_openai``: ``reasoning``/``reasoning_content`` of earlier assistant turns become
  thinking chunks, tool messages tool results, ``developer`` a system prompt); images are passed as already
  fetched PIL images (``ImageChunk``), so mistral_common never goes to the network. ``model_effort``
  ("none"/"high") becomes ``reasoning_effort``, rendered as ``[MODEL_SETTINGS]`` by v15 tokenizers; when
  omitted, the tokenizer's own default applies (``none`` for Mistral Small 4 and tiny-random).
* :class:`ChatTemplateRenderer` -- other checkpoints: the tokenizer's chat template (text only).

Only the mapping is ours; mistral_common's validation errors become 400s naming ``messages``.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unimodel.engines.base import GenerationRequest
from unimodel.engines.local.detok import ByteDetokenizer, Detokenizer, OffsetDetokenizer
from unimodel.errors import InvalidRequestError, UnsupportedFeatureError
from unimodel.protocol.openai import ImagePart, Message, NamedToolChoice

_MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id", "reasoning", "reasoning_content")


@dataclass
class RenderedPrompt:
    """What the model is fed: prompt ids and, for vision models, the encoded images in prompt order."""

    token_ids: list[int]
    images: list[Any] = field(default_factory=list)  # numpy arrays [3, H, W], normalised by the encoder


def wire_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Our wire messages as plain OpenAI dicts (only the fields a renderer understands)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        d = m.model_dump(mode="json", exclude_none=True, by_alias=True)
        out.append({k: d[k] for k in _MESSAGE_KEYS if k in d})
    return out


def has_images(messages: list[Message]) -> bool:
    return any(isinstance(m.content, list) and any(isinstance(p, ImagePart) for p in m.content) for m in messages)


class PromptRenderer(abc.ABC):
    """Renders requests and describes the tokenizer's special ids."""

    #: whether the tokenizer can encode images (the model must be a vision model too)
    supports_images: bool = False

    @abc.abstractmethod
    def render(self, request: GenerationRequest, images: Mapping[str, Any] | None = None) -> RenderedPrompt:
        """Prompt ids for ``request``; ``images`` maps each ``image_url`` to its fetched PIL image."""

    @abc.abstractmethod
    def new_detokenizer(self) -> Detokenizer: ...

    @property
    @abc.abstractmethod
    def eos_ids(self) -> frozenset[int]: ...

    @abc.abstractmethod
    def special_ids(self, names: tuple[str, ...]) -> dict[str, int]:
        """Ids of the marker tokens among ``names`` that this tokenizer has as single special tokens."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...


class MistralRenderer(PromptRenderer):
    """``mistral_common`` rendering for tekken checkpoints (see the module docstring)."""

    def __init__(self, tekken_path: Path) -> None:
        from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

        self.tokenizer = MistralTokenizer.from_file(str(tekken_path))
        self._inner = self.tokenizer.instruct_tokenizer.tokenizer
        self.supports_images = getattr(self.tokenizer.instruct_tokenizer, "image_encoder", None) is not None
        self.version = self._inner.version
        special = self._inner.special_ids
        # every id's bytes (b"" for special ids), built once here (in the loading thread, ~5 µs an id):
        # streaming then costs one list lookup per token
        self._pieces = [b"" if i in special else self._inner.id_to_byte_piece(i) for i in range(self._inner.n_words)]  # type: ignore[attr-defined]  # Tekkenizer has it; the base type does not

    def to_mistral_request(self, request: GenerationRequest, images: Mapping[str, Any] | None = None) -> Any:
        """The mistral_common ``ChatCompletionRequest`` for ``request`` (public for tests)."""
        from mistral_common.protocol.instruct.chunk import ImageChunk, ImageURLChunk
        from mistral_common.protocol.instruct.request import ChatCompletionRequest

        kwargs: dict[str, Any] = {}
        if request.model_effort is not None and self.version.supports_model_settings:
            kwargs["reasoning_effort"] = request.model_effort
        if request.tool_choice is not None:
            choice = request.tool_choice
            kwargs["tool_choice"] = choice.model_dump(mode="json") if isinstance(choice, NamedToolChoice) else choice
        if request.parallel_tool_calls is not None:
            kwargs["parallel_tool_calls"] = request.parallel_tool_calls
        tools = [t.model_dump(mode="json", exclude_none=True) for t in request.tools] if request.tools else None
        try:
            req = ChatCompletionRequest.from_openai(wire_messages(request.messages), tools=tools, **kwargs)
        except (ValueError, TypeError) as exc:
            raise InvalidRequestError(f"the messages cannot be rendered for this model: {exc}",
                                      param="messages") from exc
        for message in req.messages:
            content = getattr(message, "content", None)
            if not isinstance(content, list):
                continue
            for i, chunk in enumerate(content):
                if isinstance(chunk, ImageURLChunk):
                    url = chunk.get_url()
                    if images is None or url not in images:
                        raise UnsupportedFeatureError("image_url parts must be fetched before rendering",
                                                      param="messages")
                    content[i] = ImageChunk(image=images[url])
        return req

    def render(self, request: GenerationRequest, images: Mapping[str, Any] | None = None) -> RenderedPrompt:
        from mistral_common.exceptions import MistralCommonException

        if has_images(request.messages) and not self.supports_images:
            raise UnsupportedFeatureError("this model does not accept images (it has no vision encoder)",
                                          param="messages")
        req = self.to_mistral_request(request, images)
        try:
            tokenized = self.tokenizer.encode_chat_completion(req)
        except (MistralCommonException, ValueError, AssertionError) as exc:
            raise InvalidRequestError(f"the messages cannot be rendered for this model: {exc}",
                                      param="messages") from exc
        return RenderedPrompt(list(tokenized.tokens), list(tokenized.images))

    def new_detokenizer(self) -> Detokenizer:
        return ByteDetokenizer(self._pieces.__getitem__, self._inner.special_ids)

    @property
    def eos_ids(self) -> frozenset[int]:
        return frozenset({self._inner.eos_id})

    def special_ids(self, names: tuple[str, ...]) -> dict[str, int]:
        out: dict[str, int] = {}
        for name in names:
            try:
                out[name] = self._inner.get_special_token(name)
            except (ValueError, KeyError):
                continue
        return out

    @property
    def vocab_size(self) -> int:
        return int(self._inner.n_words)


class ChatTemplateRenderer(PromptRenderer):
    """A Hugging Face tokenizer's chat template (text only; ``model_effort`` passed as template variables)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def render(self, request: GenerationRequest, images: Mapping[str, Any] | None = None) -> RenderedPrompt:
        if has_images(request.messages):
            raise UnsupportedFeatureError("images are supported for Mistral (tekken) checkpoints only",
                                          param="messages")
        messages = wire_messages(request.messages)
        for m in messages:
            if isinstance(m.get("content"), list):
                m["content"] = "".join(p.get("text", "") for p in m["content"])
        extra: dict[str, Any] = {}
        if request.model_effort is not None:
            extra = {"reasoning_effort": request.model_effort, "enable_thinking": request.model_effort == "high"}
        tools = [t.model_dump(mode="json", exclude_none=True) for t in request.tools or []] or None
        try:
            ids = self.tokenizer.apply_chat_template(
                messages, tools=tools, add_generation_prompt=True, tokenize=True, return_dict=False, **extra
            )
        except Exception as exc:  # templates raise anything (jinja errors, TemplateError, ValueError)
            raise InvalidRequestError(f"the chat template rejected the messages: {exc}", param="messages") from exc
        if isinstance(ids, Mapping):
            ids = ids["input_ids"]
        return RenderedPrompt([int(i) for i in ids])

    def new_detokenizer(self) -> Detokenizer:
        special = set(self.tokenizer.all_special_ids)
        return OffsetDetokenizer(
            lambda ids: self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False),
            special,
        )

    @property
    def eos_ids(self) -> frozenset[int]:
        eos = self.tokenizer.eos_token_id
        return frozenset() if eos is None else frozenset({int(eos)})

    def special_ids(self, names: tuple[str, ...]) -> dict[str, int]:
        out: dict[str, int] = {}
        unk = self.tokenizer.unk_token_id
        for name in names:
            ids = self.tokenizer.encode(name, add_special_tokens=False)
            if len(ids) == 1 and ids[0] != unk:
                out[name] = int(ids[0])
        return out

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)
