"""How big a run is when the flags do not say: a quick run by default, the full one with ``--full``.

The quick run is made to finish in minutes on a small CPU box (the README's example against ``tiny-random``
on two cores), and to stay honest on a real model: ``max_tokens`` is chosen per effort, room for the answer
(512 tokens: the longest answer a suite asks for is a short Python function) plus what the effort may think
(the server's default thinking budgets: ``low`` 1,024, ``medium`` 4,096, ``high`` unbounded). The quick run
caps the thinking of ``medium`` and above at 1,536 tokens, so a model that thinks longer is cut there; every
answer cut by ``max_tokens`` (``finish_reason: length``) is counted per effort and shown beside the figures
and the verdict, never hidden. ``default`` (no ``reasoning_effort`` sent) may think: it gets ``high``'s room.

An explicit ``--samples`` or ``--max-tokens`` wins over either profile; ``--max-tokens`` then applies to every
effort.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

QUICK_SAMPLES = 5
FULL_SAMPLES = 50
QUICK_MAX_TOKENS = {"none": 512, "minimal": 512, "low": 1536, "medium": 2048, "high": 2048, "xhigh": 2048,
                    "default": 2048}
FULL_MAX_TOKENS = {"none": 1024, "minimal": 1024, "low": 2048, "medium": 5120, "high": 8192, "xhigh": 8192,
                   "default": 8192}


def samples(full: bool, explicit: Optional[int]) -> int:
    """Tasks per suite."""
    if explicit is not None:
        return explicit
    return FULL_SAMPLES if full else QUICK_SAMPLES


def max_tokens(efforts: Sequence[str], full: bool, explicit: Optional[int]) -> dict[str, int]:
    """``max_tokens`` of each effort's requests."""
    if explicit is not None:
        return {effort: explicit for effort in efforts}
    table = FULL_MAX_TOKENS if full else QUICK_MAX_TOKENS
    return {effort: table[effort] for effort in efforts}


def summary(table: dict[str, int]) -> str:
    """``none 512, high 2048`` (or ``512`` when every effort has the same)."""
    if len(set(table.values())) == 1:
        return str(next(iter(table.values())))
    return ", ".join(f"{effort} {n}" for effort, n in table.items())
