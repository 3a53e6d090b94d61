"""Chat-template rendering: a Hugging Face tokenizer's own template (checkpoints without ``tekken.json``).

Text only. ``model_effort`` is passed as the template variables templates read (``reasoning_effort``, and
``enable_thinking``: true for ``high``); ``continue_final_message`` is transformers' own option (the final
assistant message is left open and no generation prompt is added). The template's errors become 400s naming
``messages``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from unimodel.errors import InvalidRequestError, UnsupportedFeatureError
from unimodel.formats.detok import Detokenizer, OffsetDetokenizer
from unimodel.formats.render import PromptRenderer, RenderedPrompt, RenderRequest, has_images, wire_messages


class ChatTemplateRenderer(PromptRenderer):
    """A Hugging Face tokenizer's chat template (see the module docstring)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
        self._control = frozenset({int(i) for i, tok in decoder.items() if getattr(tok, "special", False)}
                                  | {int(i) for i in tokenizer.all_special_ids})

    def render(self, request: RenderRequest, images: Mapping[str, Any] | None = None) -> RenderedPrompt:
        if has_images(request.messages):
            raise UnsupportedFeatureError("images are supported for Mistral (tekken) checkpoints only",
                                          param="messages")
        messages = wire_messages(request.messages)
        for m in messages:
            if isinstance(m.get("content"), list):
                m["content"] = "".join(p.get("text", "") for p in m["content"])
        extra: dict[str, Any] = {}
        if request.model_effort is not None:
            extra = {"reasoning_effort": request.model_effort, "enable_thinking": request.model_effort != "none"}
        tools = [t.model_dump(mode="json", exclude_none=True) for t in request.tools or []] or None
        continuing = request.continue_final_message
        try:
            ids = self.tokenizer.apply_chat_template(
                messages, tools=tools, add_generation_prompt=not continuing, continue_final_message=continuing,
                tokenize=True, return_dict=False, **extra,
            )
        except Exception as exc:  # templates raise anything (jinja errors, TemplateError, ValueError)
            raise InvalidRequestError(f"the chat template rejected the messages: {exc}", param="messages") from exc
        if isinstance(ids, Mapping):
            ids = ids["input_ids"]
        return RenderedPrompt([int(i) for i in ids])

    def encode_text(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [int(i) for i in self.tokenizer.encode(text, add_special_tokens=add_special_tokens)]

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=False))

    def token_strs(self, token_ids: Sequence[int]) -> list[str]:
        return [str(t) for t in self.tokenizer.convert_ids_to_tokens(list(token_ids))]

    def new_detokenizer(self) -> Detokenizer:
        special = set(self.tokenizer.all_special_ids)
        return OffsetDetokenizer(
            lambda ids: self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False),
            special,
        )

    def token_bytes(self, token_id: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if not isinstance(piece, str):
            return b""
        if token_id in self._control:
            return piece.encode()
        byte_level = _byte_decoder()
        if all(c in byte_level for c in piece):  # GPT-2 style byte-level BPE: one character a byte
            return bytes(byte_level[c] for c in piece)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # sentencepiece byte fallback
            try:
                return bytes([int(piece[3:5], 16)])
            except ValueError:
                pass
        return piece.replace("\u2581", " ").encode()  # sentencepiece's word boundary is a space

    @property
    def eos_ids(self) -> frozenset[int]:
        eos = self.tokenizer.eos_token_id
        return frozenset() if eos is None else frozenset({int(eos)})

    @property
    def control_ids(self) -> frozenset[int]:
        return self._control

    def single_token_id(self, text: str) -> int | None:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1 or ids[0] == self.tokenizer.unk_token_id:
            return None
        return int(ids[0])

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def llguidance_tokenizer(self, eos_ids: Sequence[int]) -> Any:
        from llguidance.hf import from_tokenizer

        return from_tokenizer(self.tokenizer, eos_token=list(eos_ids) or None)


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet read back: each of the 256 characters it writes for a byte → that byte."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}
