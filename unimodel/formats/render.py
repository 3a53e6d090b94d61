"""Rendering requests into prompt ids: the interface the in-process engine uses, and what renderers share.

A model format picks its renderer (:meth:`unimodel.formats.base.ModelFormat.load_renderer`): mistral_common
for tekken checkpoints (:mod:`unimodel.formats.mistral_render`), the tokenizer's chat template otherwise
(:mod:`unimodel.formats.chat_template`). The renderer also holds the tokenizer, so it answers the tokenizer
questions an engine has: single-token ids of marker texts, EOS, a streaming detokenizer, and the token table
for constrained decoding.

A renderer reads a :class:`RenderRequest`: any object with these fields (the engines' ``GenerationRequest`` is
one), so this package does not depend on the engines. Heavy libraries (mistral_common's tokenizer,
transformers, llguidance) are imported inside the methods that need them.

Continuing a message (``continue_final_message``): the final assistant message is rendered open, without its
end-of-turn, and no new turn is started, so the model's output continues it (mistral_common's
``AssistantMessage.prefix``, transformers' ``continue_final_message``).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

from unimodel.formats.detok import Detokenizer
from unimodel.protocol.openai import ImagePart, Message, Tool, ToolChoice

_MESSAGE_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id", "reasoning", "reasoning_content")


class RenderRequest(Protocol):
    """The fields of a validated request a renderer reads."""

    @property
    def messages(self) -> Sequence[Message]: ...
    @property
    def tools(self) -> Optional[Sequence[Tool]]: ...
    @property
    def tool_choice(self) -> Optional[ToolChoice]: ...
    @property
    def parallel_tool_calls(self) -> Optional[bool]: ...
    @property
    def model_effort(self) -> Optional[str]: ...
    @property
    def continue_final_message(self) -> bool: ...


@dataclass
class RenderedPrompt:
    """What the model is fed: prompt ids and, for vision models, the encoded images in prompt order."""

    token_ids: list[int]
    images: list[Any] = field(default_factory=list)  # numpy arrays [3, H, W], normalised by the encoder


def wire_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Our wire messages as plain OpenAI dicts (only the fields a renderer understands)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        d = m.model_dump(mode="json", exclude_none=True, by_alias=True)
        out.append({k: d[k] for k in _MESSAGE_KEYS if k in d})
    return out


def has_images(messages: Sequence[Message]) -> bool:
    return any(isinstance(m.content, list) and any(isinstance(p, ImagePart) for p in m.content) for m in messages)


class PromptRenderer(abc.ABC):
    """Renders requests with one tokenizer and answers the engine's questions about that tokenizer."""

    #: whether the tokenizer can encode images (the model must be a vision model too)
    supports_images: bool = False

    @abc.abstractmethod
    def render(self, request: RenderRequest, images: Mapping[str, Any] | None = None) -> RenderedPrompt:
        """Prompt ids for ``request``; ``images`` maps each ``image_url`` to its fetched PIL image.

        Raises :class:`unimodel.errors.InvalidRequestError` (param ``messages``) for a conversation the model
        cannot take.
        """

    @abc.abstractmethod
    def new_detokenizer(self) -> Detokenizer: ...

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for, alone (a control token: its name; an id the tokenizer lacks: none):
        what ``logprobs`` show of a token (``bytes``, and ``token`` as their text)."""
        raise NotImplementedError

    @property
    @abc.abstractmethod
    def eos_ids(self) -> frozenset[int]: ...

    @property
    @abc.abstractmethod
    def control_ids(self) -> frozenset[int]:
        """Ids of the tokenizer's control tokens (turn and role delimiters, markers): never typed text."""

    @abc.abstractmethod
    def single_token_id(self, text: str) -> int | None:
        """The id of the one token that is exactly ``text`` in this tokenizer, else None."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @abc.abstractmethod
    def llguidance_tokenizer(self, eos_ids: Sequence[int]) -> Any:
        """llguidance's ``LLTokenizer`` for this tokenizer (blocking, ~1 s; needs the ``llguidance`` package)."""

    def encode_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """``text`` as it is, no chat template (a raw prompt): the tokenizer's own special tokens (BOS) added
        when ``add_special_tokens``; special-token names typed in the text stay text, as vLLM encodes them."""
        raise NotImplementedError

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text of ``token_ids`` (``/detokenize``), special tokens spelled out as vLLM's ``/detokenize`` does;
        the ids are in the vocabulary (the caller checks)."""
        raise NotImplementedError

    def token_strs(self, token_ids: Sequence[int]) -> list[str]:
        """Each id as the tokenizer spells its token (``/tokenize``'s ``token_strs``)."""
        raise NotImplementedError

    def special_ids(self, names: Sequence[str]) -> dict[str, int]:
        """The ids of those ``names`` that are single tokens here."""
        out: dict[str, int] = {}
        for name in names:
            tid = self.single_token_id(name)
            if tid is not None:
                out[name] = tid
        return out
