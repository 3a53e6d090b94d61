"""The running decode batch of the embedded engine: rows sharing one left-padded ``DynamicCache``.

Hand-written because transformers has no "add rows to / drop rows from a live cache" operation: rows are
merged by left-padding both caches to a common length and concatenating on the batch axis, and dropped by
``index_select`` on the batch axis, trimming the columns that have become padding for every row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from unimodel.engines.local.sequence import SequenceRequest


class RunningBatch:
    """The running rows: their shared (left-padded) cache, attention mask, next positions and last tokens."""

    def __init__(self) -> None:
        self.seqs: list[SequenceRequest] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # [rows, cached length], 1 = real token
        self.positions: list[int] = []
        self.last: list[int] = []

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def columns(self) -> int:
        """Cached length of every row (left padding included)."""
        return 0 if self.mask is None else int(self.mask.shape[1])

    def merge(self, seqs: list[SequenceRequest], cache: Any, mask: torch.Tensor, positions: list[int],
              last: list[int]) -> None:
        """Append rows (their own left-padded cache and mask) to the batch, padding the shorter side."""
        if not self.seqs:
            self.cache, self.mask = cache, mask
        else:
            assert self.mask is not None
            mine, theirs = self.mask.shape[1], mask.shape[1]
            total = max(mine, theirs)
            left_pad_cache(self.cache, total - mine)
            left_pad_cache(cache, total - theirs)
            for a, b in zip(self.cache.layers, cache.layers):
                a.keys = torch.cat([a.keys, b.keys], dim=0)
                a.values = torch.cat([a.values, b.values], dim=0)
            self.mask = torch.cat([left_pad(self.mask, total - mine), left_pad(mask, total - theirs)])
        self.seqs += seqs
        self.positions += positions
        self.last += last

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (drops the others' cache), then trim columns that are padding for every row."""
        if len(rows) == len(self.seqs):
            return
        if not rows:
            self.__init__()  # type: ignore[misc]
            return
        assert self.mask is not None
        index = torch.tensor(rows, device=self.mask.device)
        self.seqs = [self.seqs[i] for i in rows]
        self.positions = [self.positions[i] for i in rows]
        self.last = [self.last[i] for i in rows]
        mask = self.mask.index_select(0, index)
        start = int(mask.any(dim=0).nonzero()[0, 0])
        self.mask = mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[..., start:, :]
            layer.values = layer.values.index_select(0, index)[..., start:, :]


def left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    return t if n == 0 else torch.nn.functional.pad(t, (n, 0))


def left_pad_cache(cache: Any, n: int) -> None:
    if n == 0:
        return
    for layer in cache.layers:
        layer.keys = torch.nn.functional.pad(layer.keys, (0, 0, n, 0))
        layer.values = torch.nn.functional.pad(layer.values, (0, 0, n, 0))
