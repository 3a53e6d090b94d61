"""Per-sequence sampling for the batched scheduler: temperature, top-k, top-p, a seed per request.

Hand-written because transformers' samplers share one global RNG (``torch.multinomial``) across a batch, so a
request's output would depend on who else was decoding; here every sequence owns a ``torch.Generator`` and
draws exactly one uniform number per token, so the same seed and the same request give the same output
whatever the batch. The rest is vectorised over the rows of one decode step: greedy rows take ``argmax``,
sampled rows are scaled, truncated (top-k, then top-p on the sorted distribution) and inverted through their
CDF with their own uniform draw.

Per-request logit hooks (a grammar's token mask, forcing the end of thinking at a thinking budget) run before
this, row by row, in :mod:`unimodel.engines.local.scheduler`.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How one sequence picks its tokens. ``temperature == 0`` is greedy (then top-k/top-p/seed do nothing)."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop_token_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def new_generator(self) -> torch.Generator:
        """The sequence's own RNG: seeded from ``seed``, else from the OS."""
        gen = torch.Generator(device="cpu")
        gen.manual_seed(self.seed if self.seed is not None else secrets.randbits(63))
        return gen


def sample_rows(
    logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator]
) -> list[int]:
    """One token per row of ``logits`` ([rows, vocab], float32) under each row's params and generator."""
    rows = logits.shape[0]
    out = [0] * rows
    greedy = [i for i in range(rows) if params[i].greedy]
    if greedy:
        picked = torch.argmax(logits[greedy] if len(greedy) < rows else logits, dim=-1).tolist()
        for i, tok in zip(greedy, picked):
            out[i] = int(tok)
    sampled = [i for i in range(rows) if not params[i].greedy]
    if not sampled:
        return out
    sub = logits[sampled] if len(sampled) < rows else logits
    temps = torch.tensor([params[i].temperature for i in sampled], dtype=sub.dtype, device=sub.device)
    sub = sub / temps[:, None]
    top_ks = [params[i].top_k for i in sampled]
    if any(k > 0 for k in top_ks):
        vocab = sub.shape[-1]
        kmax = min(vocab, max(k if k > 0 else vocab for k in top_ks))
        kth = torch.topk(sub, kmax, dim=-1).values
        idx = torch.tensor([min(k, vocab) - 1 if k > 0 else kmax - 1 for k in top_ks], device=sub.device)
        thresh = kth.gather(1, idx[:, None])
        no_k = torch.tensor([k <= 0 or k >= vocab for k in top_ks], device=sub.device)
        thresh = torch.where(no_k[:, None], torch.full_like(thresh, float("-inf")), thresh)
        sub = sub.masked_fill(sub < thresh, float("-inf"))
    probs = torch.softmax(sub, dim=-1)
    top_ps = [params[i].top_p for i in sampled]
    uniforms = torch.stack([torch.rand((), generator=generators[i]) for i in sampled]).to(sub.device)
    if any(p < 1.0 for p in top_ps):
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
        cum = torch.cumsum(sorted_probs, dim=-1)
        p = torch.tensor(top_ps, dtype=probs.dtype, device=probs.device)[:, None]
        # keep the smallest prefix whose mass reaches p (always at least the top token)
        drop = (cum - sorted_probs) >= p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        cum = torch.cumsum(sorted_probs, dim=-1)
        target = uniforms[:, None].to(cum.dtype) * cum[:, -1:]
        pos = torch.searchsorted(cum, target, right=True).clamp_(max=cum.shape[-1] - 1)
        chosen = order.gather(1, pos).squeeze(1).tolist()
    else:
        cum = torch.cumsum(probs, dim=-1)
        target = uniforms[:, None].to(cum.dtype) * cum[:, -1:]
        chosen = torch.searchsorted(cum, target, right=True).clamp_(max=cum.shape[-1] - 1).squeeze(1).tolist()
    for i, tok in zip(sampled, chosen):
        out[i] = int(tok)
    return out
