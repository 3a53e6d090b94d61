"""Mistral rendering: ``mistral_common`` renders and tokenizes tekken checkpoints (never a hand-written template).

Our wire messages go through mistral_common's own OpenAI converter (``ChatCompletionRequest.from_openai``:
``reasoning``/``reasoning_content`` of earlier assistant turns become thinking chunks, tool messages tool
results, ``developer`` a system prompt); images are passed as already fetched PIL images (``ImageChunk``), so
mistral_common never goes to the network. ``model_effort`` ("none"/"high") becomes ``reasoning_effort``,
rendered as ``[MODEL_SETTINGS]`` by v15 tokenizers; when omitted, the tokenizer's own default applies (``none``
for Mistral Small 4 and tiny-random). ``continue_final_message`` sets ``prefix`` on the final assistant message.

Only the mapping is ours; mistral_common's validation errors become 400s naming ``messages``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from unimodel.errors import InvalidRequestError, UnsupportedFeatureError
from unimodel.formats.detok import ByteDetokenizer, Detokenizer
from unimodel.formats.render import PromptRenderer, RenderedPrompt, RenderRequest, has_images, wire_messages
from unimodel.protocol.openai import NamedToolChoice


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

    def to_mistral_request(self, request: RenderRequest, images: Mapping[str, Any] | None = None) -> Any:
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
            req = ChatCompletionRequest.from_openai(
                wire_messages(request.messages), tools=tools,
                continue_final_message=request.continue_final_message, **kwargs)
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

    def render(self, request: RenderRequest, images: Mapping[str, Any] | None = None) -> RenderedPrompt:
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

    def encode_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._inner.encode(text, bos=add_special_tokens, eos=False))

    def decode(self, token_ids: Sequence[int]) -> str:
        from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy

        return str(self._inner.decode(list(token_ids), special_token_policy=SpecialTokenPolicy.KEEP))

    def token_strs(self, token_ids: Sequence[int]) -> list[str]:
        return [self._inner.id_to_piece(i) for i in token_ids]

    def new_detokenizer(self) -> Detokenizer:
        return ByteDetokenizer(self._pieces.__getitem__, self._inner.special_ids)

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < len(self._pieces):
            return b""
        piece = self._pieces[token_id]
        if piece or token_id not in self._inner.special_ids:
            return piece
        return str(self._inner.id_to_piece(token_id)).encode()

    @property
    def eos_ids(self) -> frozenset[int]:
        return frozenset({self._inner.eos_id})

    @property
    def control_ids(self) -> frozenset[int]:
        return frozenset(self._inner.special_ids)

    def single_token_id(self, text: str) -> int | None:
        try:
            return int(self._inner.get_special_token(text))
        except (ValueError, KeyError):
            return None  # ordinary text never encodes to a special token in tekken

    @property
    def vocab_size(self) -> int:
        return int(self._inner.n_words)

    def llguidance_tokenizer(self, eos_ids: Sequence[int]) -> Any:
        import llguidance

        return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_TekkenTable(self._inner)),
                                      eos_token=list(eos_ids) or None)


class _TekkenTable:
    """The token table llguidance's ``TokenizerWrapper`` reads, from a tekken tokenizer."""

    def __init__(self, inner: Any) -> None:
        special = inner.special_ids
        self._inner = inner
        self.eos_token_id = inner.eos_id
        self.bos_token_id = inner.bos_id
        self.special_token_ids = sorted(special)
        self.tokens = [inner.id_to_piece(i).encode() if i in special else inner.id_to_byte_piece(i)
                       for i in range(inner.n_words)]

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return list(self._inner.encode(text, bos=False, eos=False))
