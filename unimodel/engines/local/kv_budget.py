"""The KV memory budget of the embedded engine: bytes per cached token, and which batches fit.

Bytes per token are measured, not derived from the config: one token is run into a fresh cache and its
tensors are summed. For Mistral4 (MLA) transformers 5.24's ``DynamicCache`` stores the compressed latent
(``kv_lora_rank`` as keys, ``qk_rope_head_dim`` as values, per layer), i.e. (kv_lora_rank + qk_rope_head_dim)
× layers × dtype bytes; other versions or models may store decompressed K/V, and measuring covers both.

The running batch is one left-padded cache (:mod:`.batch`): it holds ``rows × longest row`` tokens, not the
sum of the rows. A row never grows past its reservation (prompt + max new tokens, at most the context
length), so ``rows × max(reservation)`` bounds the batch's cache for its whole life; :meth:`KvBudget.fits`
admits a set of rows only if that bound is within the budget. Transient copies (merging a prefill's cache into
the batch concatenates them) come on top: leave headroom in ``--kv-memory-gb``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

GB = 10**9


def bytes_per_token(model: Any, new_cache: Callable[[], Any], cache_kwarg: str, device: torch.device) -> int:
    """Bytes the model's cache holds per token (all layers), measured by caching one token."""
    cache = new_cache()
    with torch.inference_mode():
        model(input_ids=torch.ones((1, 1), dtype=torch.long, device=device), **{cache_kwarg: cache},
              use_cache=True, logits_to_keep=1)
    total = 0
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return max(1, total)


def budget_bytes(kv_memory_gb: float | None, device: torch.device, cuda_fraction: float) -> int | None:
    """The KV budget in bytes: ``--kv-memory-gb`` when given, else on CUDA ``cuda_fraction`` of the memory
    free once the model is loaded, else None (no budget beyond ``max_num_seqs × max_model_len``)."""
    if kv_memory_gb is not None:
        return int(kv_memory_gb * GB)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free * cuda_fraction)
    return None


class KvBudget:
    """How many cached tokens the budget holds, and whether a set of rows fits it (see the module docstring)."""

    def __init__(self, tokens: int | None, bytes_per_token: int) -> None:
        self.tokens = tokens
        self.bytes_per_token = bytes_per_token

    @classmethod
    def from_bytes(cls, budget: int | None, bytes_per_token: int) -> KvBudget:
        return cls(None if budget is None else budget // bytes_per_token, bytes_per_token)

    def fits(self, reservations: Sequence[int]) -> bool:
        """Whether rows with these reservations (tokens each) fit together in one left-padded batch."""
        if self.tokens is None or not reservations:
            return True
        return len(reservations) * max(reservations) <= self.tokens

    def describe(self) -> str:
        if self.tokens is None:
            return "unbounded"
        return (f"{self.tokens} tokens ({self.tokens * self.bytes_per_token / GB:.3g} GB at "
                f"{self.bytes_per_token} bytes/token)")
