"""UTF-8-safe incremental detokenization: token ids in, text pieces out, never half a character.

Hand-written because the tokenizers' own ``decode`` works on whole sequences; streaming needs the text each
new token adds. Two strategies, one interface:

* :class:`ByteDetokenizer` -- for tokenizers that can give a token's bytes (tekken: ``id_to_byte_piece``).
  Bytes go through Python's incremental UTF-8 decoder, which holds back an incomplete multi-byte character
  until its last byte arrives. Exact and O(1) per token.
* :class:`OffsetDetokenizer` -- for any tokenizer with a sequence ``decode`` (Hugging Face tokenizers; TGI's
  method): decode a short window before and after the new token and emit the difference, waiting while the
  result ends in U+FFFD (an incomplete character) or the window text did not grow.

Special tokens (a family's markers, EOS) produce no text here: the output parser recognises them by id.
"""

from __future__ import annotations

import abc
import codecs
from collections.abc import Callable, Collection


class Detokenizer(abc.ABC):
    """Turns generated token ids, one at a time, into text pieces."""

    @abc.abstractmethod
    def push(self, token_id: int) -> str:
        """The text ``token_id`` completes ("" while a character is incomplete or for a special token)."""

    @abc.abstractmethod
    def flush(self) -> str:
        """Text still held back (an incomplete character becomes U+FFFD); the state is reset."""


class ByteDetokenizer(Detokenizer):
    def __init__(self, byte_piece: Callable[[int], bytes], special_ids: Collection[int]) -> None:
        self._byte_piece = byte_piece
        self._special = special_ids
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        if token_id in self._special:
            return ""
        return self._decoder.decode(self._byte_piece(token_id))

    def flush(self) -> str:
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return text


class OffsetDetokenizer(Detokenizer):
    """Window decoding for tokenizers without byte pieces (see the module docstring)."""

    def __init__(self, decode: Callable[[list[int]], str], special_ids: Collection[int]) -> None:
        self._decode = decode
        self._special = special_ids
        self._ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # tokens already turned into text

    def push(self, token_id: int) -> str:
        if token_id in self._special:
            return ""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before):]
        return ""

    def flush(self) -> str:
        before = self._decode(self._ids[self._prefix:self._read])
        after = self._decode(self._ids[self._prefix:])
        self._ids, self._prefix, self._read = [], 0, 0
        return after[len(before):]
