"""The reasoning-effort levels a client may ask for, and their order: the one definition of both.

Clients send ``reasoning_effort`` as one of five levels, lowest first. What a model itself knows is a
model format's business (:attr:`unimodel.formats.base.ModelFormat.reasoning_levels`), and how a level the
model does not know is served (the nearest level it knows, with a thinking budget) is the served model's
:class:`unimodel.formats.reasoning.ReasoningPolicy`. ``none`` is special everywhere: no thinking at all.
"""

from __future__ import annotations

from typing import Literal, get_args

Effort = Literal["none", "minimal", "low", "medium", "high"]

#: every level, lowest first
EFFORTS: tuple[Effort, ...] = get_args(Effort)

#: the level that means "do not think", for clients and models alike
NO_THINKING = "none"

_RANK = {effort: rank for rank, effort in enumerate(EFFORTS)}


def effort_rank(effort: str) -> int:
    """The position of a client level in :data:`EFFORTS` (``none`` is 0); ValueError for an unknown one."""
    try:
        return _RANK[effort]
    except KeyError:
        raise ValueError(f"unknown reasoning effort {effort!r}; known: {', '.join(EFFORTS)}") from None
