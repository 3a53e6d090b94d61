"""Constrained decoding with llguidance: the compiler and the per-request logits hook.

The grammars themselves (JSON mode, forced tool calls, the thinking block before them) are built by the model
format, as text (:mod:`unimodel.formats.grammar`); this module only compiles them against the loaded
tokenizer and applies the resulting token masks.

Why llguidance (over xgrammar and outlines-core, all installable from PyPI here): it is a Rust library with no
torch or compiler dependency at run time, computes token masks lazily (measured on this 2-core CPU with the
tiny-random 32k vocabulary: ~30 µs per token to advance the matcher and compute the mask, plus ~50 µs to
apply it to the logits, against a 3-6 ms decode step), compiles a schema in a few milliseconds, accepts JSON
Schema and Lark (so a family's thinking block and tool-call markers can be part of the grammar, by token id),
and builds its tokenizer from raw byte pieces, which is what tekken gives. Its ``llguidance.torch`` helper
applies masks with ``torch.compile``, which needs a C++ toolchain on CPU; we unpack the bitmask with numpy
instead. Once the answer is complete only EOS is allowed.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch

from unimodel.errors import InvalidRequestError, UnsupportedFeatureError
from unimodel.formats.render import PromptRenderer


class GrammarCompiler:
    """Compiles grammar text into one :class:`GrammarHook` per request; the llguidance tokenizer is built once."""

    def __init__(self, renderer: PromptRenderer, eos_ids: frozenset[int], model_vocab: int) -> None:
        self._renderer = renderer
        self._eos = sorted(eos_ids)
        self._model_vocab = model_vocab
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def _llg_tokenizer(self, param: str) -> Any:
        with self._lock:
            if self._tokenizer is None:
                try:
                    self._tokenizer = self._renderer.llguidance_tokenizer(self._eos)
                except ImportError as exc:
                    raise UnsupportedFeatureError(
                        f"enforcing {param} needs the 'llguidance' package on the server (pip install llguidance)",
                        param=param) from exc
                except (ValueError, TypeError) as exc:
                    raise UnsupportedFeatureError(f"{param} cannot be enforced for this tokenizer: {exc}",
                                                  param=param) from exc
            return self._tokenizer

    def hook(self, grammar: str, param: str) -> GrammarHook:
        """A matcher for ``grammar`` (blocking, ~1 s the first time: call it in a worker thread).

        ``param`` names the request field the grammar enforces, for the 400 of a grammar that does not compile.
        """
        tokenizer = self._llg_tokenizer(param)
        import llguidance

        matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidRequestError(f"the {param} cannot be enforced: {matcher.get_error()}", param=param)
        return GrammarHook(matcher, self._model_vocab)


class GrammarHook:
    """Per-request logits hook: consume the newly generated tokens, then mask what the grammar forbids."""

    def __init__(self, matcher: Any, model_vocab: int) -> None:
        self._matcher = matcher
        self._vocab = model_vocab
        self._seen = 0

    def __call__(self, generated: Sequence[int], logits: torch.Tensor) -> None:
        import numpy as np

        for token in generated[self._seen:]:
            self._matcher.consume_token(token)
        self._seen = len(generated)
        if self._matcher.is_error():
            return  # a broken matcher never blocks generation; max_tokens still ends it
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, bitorder="little").view(bool)  # llguidance pads to a multiple of 32
        vocab = logits.shape[0]
        if allowed.shape[0] < vocab:
            allowed = np.concatenate([allowed, np.zeros(vocab - allowed.shape[0], dtype=bool)])
        mask = torch.from_numpy(allowed[:vocab]).to(logits.device)
        logits.copy_(torch.where(mask, logits, _NEG_INF.to(logits.device, logits.dtype)))


_NEG_INF = torch.tensor(float("-inf"))
