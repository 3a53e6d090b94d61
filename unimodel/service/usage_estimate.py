"""Token counts estimated without a tokenizer: a prompt before the engine sees it, and a request that ended
without the engine's own count.

Two readers need the same numbers: the limits stage reserves a prompt's tokens at admission (before the images
are fetched or the engine asked), and the chat service gives a request that ended without a usage event (a
client that left, a stream that broke) an estimated :class:`~unimodel.protocol.events.Usage`, which the request
log, the metrics and the limits' settlement then all read.

Hand-written, on purpose without a tokenizer: it runs on the event loop for every limited request, so it must
cost next to nothing and be bounded by the body that was already parsed. Text counts a token per four bytes of
UTF-8 (English averages about four characters a token; scripts of several bytes a character, such as CJK,
come out near a token a character, as real tokenizers count them), a message adds a few tokens for its role
markers, a tool definition its name, description and JSON schema, and an image a fixed allowance
(``image_tokens``: its pixels are not known before it is decoded, which comes after the limits).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from unimodel.engines.base import GenerationRequest
from unimodel.protocol.events import Usage
from unimodel.protocol.openai import ImagePart, TextPart

#: tokens a message adds for its role and turn markers
MESSAGE_TOKENS = 3
#: the default allowance per image: a 1024 x 1024 image in a Pixtral-style encoder (28 px a token, one break a row)
IMAGE_TOKENS = 1400


def text_bytes(text: str) -> int:
    """UTF-8 bytes of ``text``, cheaply: ``str.isascii`` is O(1) in CPython, and ASCII needs no encoding."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def tokens_of_bytes(n: int) -> int:
    return (n + 3) // 4


@dataclass(frozen=True, slots=True)
class UsageEstimator:
    """``image_tokens``: what each image of a prompt counts for (``--limits-image-tokens``)."""

    image_tokens: int = IMAGE_TOKENS

    def prompt_tokens(self, request: GenerationRequest) -> int:
        """The prompt's tokens, estimated: its messages' text, tool calls and images, and the tool definitions."""
        size, images, text = 0, 0, text_bytes
        for message in request.messages:
            content = message.content
            if isinstance(content, str):
                size += text(content)
            elif content is not None:
                for part in content:
                    if isinstance(part, TextPart):
                        size += text(part.text)
                    elif isinstance(part, ImagePart):
                        images += 1
            for call in message.tool_calls or ():
                size += text(call.function.name) + text(call.function.arguments)
        for tool in request.tools or ():
            function = tool.function
            size += len(function.name) + text(function.description or "")
            if function.parameters:
                size += len(json.dumps(function.parameters, separators=(",", ":")))
        return tokens_of_bytes(size) + MESSAGE_TOKENS * len(request.messages) + self.image_tokens * images

    def usage(self, request: GenerationRequest, output_bytes: int, reasoning_bytes: int) -> Usage:
        """The usage of a request that ended without the engine's count: its prompt, and the text it produced
        (``output_bytes`` in all, ``reasoning_bytes`` of it thinking)."""
        return Usage(self.prompt_tokens(request), tokens_of_bytes(output_bytes), tokens_of_bytes(reasoning_bytes),
                     estimated=True)
