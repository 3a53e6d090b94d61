"""Per-request logit hooks run by the scheduler before sampling (see ``sequence.LogitsHook``).

Hand-written: these are the reason the engine owns its scheduler. Each hook sees the tokens generated so far
and the row's logits, and may edit the logits in place.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch


def force_token(logits: torch.Tensor, token_id: int) -> None:
    keep = logits[token_id].clone()
    logits.fill_(float("-inf"))
    logits[token_id] = torch.where(torch.isfinite(keep), keep, torch.zeros_like(keep))


class ThinkingBudget:
    """Force the closing thinking marker once ``budget`` tokens have been generated inside a thinking block.

    The marker ids come from the model's format. ``starts_inside``: the prompt already opened the block.
    ``uncounted``: ids that are not thinking text (the family's other markers), left out of the count as the
    output's ``reasoning_tokens`` leaves them out.
    """

    def __init__(self, think_id: int, end_think_id: int, budget: int, *, starts_inside: bool = False,
                 uncounted: Collection[int] = ()) -> None:
        self.think_id, self.end_think_id, self.budget = think_id, end_think_id, budget
        self._uncounted = frozenset(uncounted)
        self._seen = 0
        self._inside = starts_inside
        self._count = 0
        self.forced = False  # read by the engine once the sequence is done

    @property
    def inside(self) -> bool:
        """Whether the tokens seen so far (or the prompt, before any) leave the thinking open."""
        return self._inside

    def __call__(self, generated: Sequence[int], logits: torch.Tensor) -> None:
        for token in generated[self._seen:]:
            if token == self.think_id:
                self._inside, self._count = True, 0
            elif token == self.end_think_id:
                self._inside = False
            elif self._inside and token not in self._uncounted:
                self._count += 1
        self._seen = len(generated)
        if self._inside and self._count >= self.budget:
            force_token(logits, self.end_think_id)
            self.forced = True


class RepetitionPenalties:
    """OpenAI ``presence_penalty`` and ``frequency_penalty`` over the tokens generated so far."""

    def __init__(self, presence: float, frequency: float, vocab_size: int) -> None:
        self.presence, self.frequency = presence, frequency
        self._counts = torch.zeros(vocab_size)
        self._seen = 0

    def __call__(self, generated: Sequence[int], logits: torch.Tensor) -> None:
        for token in generated[self._seen:]:
            if 0 <= token < self._counts.shape[0]:
                self._counts[token] += 1
        self._seen = len(generated)
        if self._seen:
            counts = self._counts[: logits.shape[0]].to(logits.device)
            logits[: counts.shape[0]] -= counts * self.frequency + (counts > 0).to(logits.dtype) * self.presence


class BanTokens:
    """Never sample these ids (``tool_choice: "none"`` bans the token that starts a tool call)."""

    def __init__(self, token_ids: Sequence[int]) -> None:
        self.token_ids = list(token_ids)

    def __call__(self, generated: Sequence[int], logits: torch.Tensor) -> None:
        logits[self.token_ids] = float("-inf")
