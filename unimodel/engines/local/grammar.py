"""Constrained decoding with llguidance: JSON mode (``response_format``) and forced tool calls (``tool_choice``).

Why llguidance (over xgrammar and outlines-core, all installable from PyPI here): it is a Rust library with no
torch or compiler dependency at run time, computes token masks lazily (measured on this 2-core CPU with the
tiny-random 32k vocabulary: ~30 µs per token to advance the matcher and compute the mask, plus ~50 µs to
apply it to the logits, against a 3-6 ms decode step), compiles a schema in a few milliseconds, accepts JSON Schema and Lark (so the optional ``[THINK]…[/THINK]`` block can be
part of the grammar, by token id), and builds its tokenizer from raw byte pieces, which is what tekken gives.
Its ``llguidance.torch`` helper applies masks with ``torch.compile``, which needs a C++ toolchain on CPU; we
unpack the bitmask with numpy instead.

Grammar: ``start: (<[THINK]> /(?s:.*)/ <[/THINK]>)? answer`` when the model may think (``model_effort`` high
and the tokenizer has the markers), else ``start: answer``; ``answer`` is the JSON value for ``response_format``,
or for ``tool_choice`` ``required``/named one or more ``[TOOL_CALLS]name[ARGS]{json}`` calls, each checked
against its tool's parameter schema (one call when ``parallel_tool_calls`` is false or a function is named).
Once the answer is complete only EOS is allowed.
Whitespace between JSON tokens is one optional space and at most one line break with up to 32 characters of
indentation: enough for pretty-printed JSON, not enough for a model to loop on blanks.
Unsupported schema keywords are ignored (``lenient``), not refused.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

import torch

from unimodel.engines.local.render import ChatTemplateRenderer, MistralRenderer, PromptRenderer
from unimodel.errors import InvalidRequestError, UnsupportedFeatureError
from unimodel.protocol.openai import ResponseFormat, Tool

_JSON_OPTIONS = {"whitespace_pattern": r"\x20?(\x0D?\x0A[\x20\x09]{0,32})?", "lenient": True}


class _TekkenWrapper:
    """The token table llguidance's ``TokenizerWrapper`` reads, from a tekken tokenizer."""

    def __init__(self, renderer: MistralRenderer) -> None:
        inner = renderer.tokenizer.instruct_tokenizer.tokenizer
        special = inner.special_ids
        self._inner = inner
        self.eos_token_id = inner.eos_id
        self.bos_token_id = inner.bos_id
        self.special_token_ids = sorted(special)
        self.tokens = [inner.id_to_piece(i).encode() if i in special else inner.id_to_byte_piece(i)  # type: ignore[attr-defined]  # Tekkenizer has it; the base type does not
                       for i in range(inner.n_words)]

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return list(self._inner.encode(text, bos=False, eos=False))


class GrammarCompiler:
    """Makes one :class:`JsonGrammarHook` per JSON-mode request; the llguidance tokenizer is built once."""

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
                    import llguidance
                except ImportError as exc:
                    raise UnsupportedFeatureError(
                        f"enforcing {param} needs the 'llguidance' package on the server (pip install llguidance)",
                        param=param) from exc
                if isinstance(self._renderer, MistralRenderer):
                    wrapped = llguidance.TokenizerWrapper(_TekkenWrapper(self._renderer))
                    self._tokenizer = llguidance.LLTokenizer(wrapped, eos_token=self._eos or None)
                elif isinstance(self._renderer, ChatTemplateRenderer):
                    from llguidance.hf import from_tokenizer

                    self._tokenizer = from_tokenizer(self._renderer.tokenizer, eos_token=self._eos or None)
                else:
                    raise UnsupportedFeatureError(f"{param} cannot be enforced for this tokenizer", param=param)
            return self._tokenizer

    def hook(self, response_format: ResponseFormat, think_ids: tuple[int, int] | None) -> JsonGrammarHook:
        """A matcher for ``response_format`` (blocking, ~1 s the first time: call it in a worker thread)."""
        schema: dict[str, Any] = {"type": "object"}
        if response_format.type == "json_schema" and response_format.json_schema is not None:
            schema = response_format.json_schema.schema_ or schema
        if not isinstance(schema, dict):
            raise InvalidRequestError("response_format json_schema.schema must be an object", param="response_format")
        return self._compile(f"answer: %json {_json_body(schema)}\n", think_ids, "response_format")

    def tool_hook(self, tools: list[Tool], names: list[str], *, calls_at_most_one: bool,
                  marker_ids: dict[str, int], think_ids: tuple[int, int] | None) -> JsonGrammarHook:
        """A matcher that makes the answer one or more calls of the tools in ``names`` (``tool_choice``
        ``required`` or a named function): ``[TOOL_CALLS]name[ARGS]{arguments per the tool's schema}``."""
        if "[TOOL_CALLS]" not in marker_ids or "[ARGS]" not in marker_ids:
            raise UnsupportedFeatureError("tool_choice cannot be enforced for this tokenizer", param="tool_choice")
        by_name = {t.function.name: t.function.parameters or {"type": "object"} for t in tools}
        alternatives = " | ".join(
            f'"{name}" <[{marker_ids["[ARGS]"]}]> %json {_json_body(by_name[name])}' for name in names)
        repeat = "" if calls_at_most_one else "+"
        rules = f"answer: call{repeat}\ncall: <[{marker_ids['[TOOL_CALLS]']}]> ( {alternatives} )\n"
        return self._compile(rules, think_ids, "tool_choice")

    def _compile(self, rules: str, think_ids: tuple[int, int] | None, param: str) -> JsonGrammarHook:
        import llguidance

        if think_ids is not None:
            start = f"start: ( <[{think_ids[0]}]> /(?s:.*)/ <[{think_ids[1]}]> )? answer\n"
        else:
            start = "start: answer\n"
        matcher = llguidance.LLMatcher(self._llg_tokenizer(param), start + rules, log_level=0)
        if matcher.is_error():
            raise InvalidRequestError(f"the {param} cannot be enforced: {matcher.get_error()}", param=param)
        return JsonGrammarHook(matcher, self._model_vocab)


def _json_body(schema: dict[str, Any]) -> str:
    return json.dumps({**schema, "x-guidance": _JSON_OPTIONS})


class JsonGrammarHook:
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
