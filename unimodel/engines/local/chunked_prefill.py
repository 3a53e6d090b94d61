"""Chunked prefill for the embedded engine: a long text prompt enters its own KV cache a chunk at a time.

The scheduler (``scheduler.py``) decides which prompts are chunked (text-only ones longer than
``max_prefill_tokens``), runs one chunk per step, each followed by a decode step of the running batch, so a
long prompt never stalls the running streams for more than one chunk; after the last chunk it samples the
first token from the logits returned here and merges the sequence into the batch. This module holds one such
job's state and its forward pass (split from the scheduler, which it would push past a readable size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from unimodel.engines.local.sequence import SequenceRequest


@dataclass(eq=False)
class ChunkedPrefill:
    """A long prompt being prefilled ``chunk_tokens`` at a time into its own ``cache``."""

    seq: SequenceRequest
    cache: Any
    chunk_tokens: int
    done: int = 0  # prompt tokens already in ``cache``

    @property
    def length(self) -> int:
        """Tokens in the whole prompt."""
        return len(self.seq.prompt_ids)

    def forward_next(self, model: Any, device: torch.device, cache_kwarg: str) -> torch.Tensor | None:
        """Prefill the next chunk (its true positions, attending to everything cached before it). Returns the
        last position's logits (``[1, vocab]``) once the whole prompt is in the cache, else ``None``."""
        n = self.length
        start, end = self.done, min(self.done + self.chunk_tokens, n)
        out = model(
            input_ids=torch.tensor([self.seq.prompt_ids[start:end]], dtype=torch.long, device=device),
            attention_mask=torch.ones((1, end), dtype=torch.long, device=device),
            position_ids=torch.arange(start, end, device=device)[None],
            **{cache_kwarg: self.cache},
            use_cache=True,
            logits_to_keep=1,
        )
        self.done = end
        return out.logits[:, -1, :] if end == n else None

    def mask(self, device: torch.device) -> torch.Tensor:
        """The attention mask of the finished prompt (no padding: the cache holds this one row)."""
        return torch.ones((1, self.length), dtype=torch.long, device=device)
