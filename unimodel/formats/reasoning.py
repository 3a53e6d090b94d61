"""How a served model turns the client's reasoning effort into what the model is told, and the budget.

Three parties, each with its own part:

* the client asks for one of the five levels of :mod:`unimodel.protocol.effort` (or none: the policy's
  default);
* the model's format declares the levels the model itself knows
  (:attr:`~unimodel.formats.base.ModelFormat.reasoning_levels`; Mistral Small 4 knows ``none`` and ``high``)
  and the level a client's level becomes by default (:meth:`~unimodel.formats.base.ModelFormat.model_effort_for`);
  how the model is told is its renderer's job (Mistral's ``[MODEL_SETTINGS]``, a template's variables) and how
  a budget is enforced its markers' (the engine closes the thinking at the budget: the local engine by forcing
  the closing marker, the upstream engine by continuing from :meth:`~unimodel.formats.base.ModelFormat.
  closed_thinking_message`);
* the operator's :class:`ReasoningPolicy` (per served model, from the settings) sets the default level,
  overrides the mapping, and gives the levels the model does not know a thinking budget, so ``low`` and
  ``medium`` are the model's ``high``, cut short.

:class:`ModelReasoning` binds a policy to a format and applies it to one request, giving the frozen
:class:`AppliedReasoning` that the engine gets (as fields of its request) and the observers read.

What a request is charged at (:attr:`AppliedReasoning.charged`): a client's ``thinking_budget`` makes the
model think as long as the budget says, whatever level was asked, so ``low`` with a budget of a million tokens
is ``high``'s work. The charged level is the lowest client level whose policy would let the model think that
long (the same model level or a higher one, and a policy budget that covers the budget the model runs with;
an unbounded budget is covered only by an unbounded level, and when no level covers it, the top level), and
never below the level asked. The high-reasoning quota and a route's ``max_reasoning_effort`` read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from pydantic import BaseModel, Field, field_validator

from unimodel.errors import InvalidRequestError
from unimodel.formats.base import ModelFormat
from unimodel.protocol.effort import EFFORTS, NO_THINKING, Effort, effort_rank


def _default_budgets() -> dict[Effort, Optional[int]]:
    return {"low": 1024, "medium": 4096, "high": None}


class ReasoningPolicy(BaseModel):
    """An operator's reasoning policy for a served model (``reasoning:`` / ``reasoning_per_model:``).

    ``model_effort`` overrides the format's mapping for the levels it names (the others keep the format's
    default: the nearest level the model knows). ``budgets`` are thinking tokens per client level; ``None``
    means unbounded (up to ``max_tokens``); a level that does not think ignores its budget.
    """

    default_effort: Effort = "none"
    include_reasoning: bool = True
    model_effort: dict[Effort, str] = Field(default_factory=dict)
    budgets: dict[Effort, Optional[int]] = Field(default_factory=_default_budgets)

    @field_validator("budgets")
    @classmethod
    def _positive(cls, v: dict[str, Optional[int]]) -> dict[str, Optional[int]]:
        for level, budget in v.items():
            if budget is not None and budget < 1:
                raise ValueError(f"the thinking budget for '{level}' must be a positive number of tokens")
        return v


@dataclass(frozen=True, slots=True)
class AppliedReasoning:
    """What one request got: the level asked for (or the default), what the model is told, and the budget
    (thinking tokens, ``None``: unbounded; always ``None`` when the model does not think)."""

    effort: Effort
    model_effort: Optional[str]
    budget: Optional[int]
    #: the level it is charged at when that is above ``effort`` (a client budget beyond the level's); else None
    charged_at: Optional[Effort] = None

    @property
    def thinks(self) -> bool:
        return self.model_effort is not None and self.model_effort != NO_THINKING

    @property
    def charged(self) -> Effort:
        """The level this request is charged at: the quotas and the routes' caps read it (the module says how)."""
        return self.charged_at or self.effort

    def report(self, thinking_tokens: Optional[int] = None, truncated: Optional[bool] = None) -> dict[str, Any]:
        """The ``unimodel_reasoning`` body field and the ``X-Unimodel-Reasoning`` header's fields."""
        out: dict[str, Any] = {"effort": self.effort, "model_effort": self.model_effort or "default",
                               "budget": self.budget}
        if thinking_tokens is not None:
            out["thinking_tokens"] = thinking_tokens
        if truncated is not None:
            out["truncated"] = truncated
        if self.charged_at is not None:
            out["charged_effort"] = self.charged_at
        return out


class ModelReasoning:
    """A policy bound to the format of the model it serves: checked once, applied per request."""

    __slots__ = ("policy", "format", "_model_effort", "_thinking")

    def __init__(self, policy: ReasoningPolicy, fmt: ModelFormat) -> None:
        unknown = {level: told for level, told in policy.model_effort.items() if told not in fmt.reasoning_levels}
        if unknown:
            level, told = next(iter(unknown.items()))
            raise ValueError(f"model_effort maps '{level}' to '{told}', which the {fmt.name} model family does "
                             f"not know (it knows: {', '.join(fmt.reasoning_levels)})")
        self.policy = policy
        self.format = fmt
        self._model_effort = {level: policy.model_effort.get(level, fmt.model_effort_for(level))
                              for level in EFFORTS}
        rank = {told: i for i, told in enumerate(fmt.reasoning_levels)}
        # the levels that think, lowest first: (level, the rank of the model level it is told, its budget)
        self._thinking = tuple((level, rank[self._model_effort[level]], policy.budgets.get(level))
                               for level in EFFORTS if self._model_effort[level] != NO_THINKING)

    @property
    def default_effort(self) -> Effort:
        return self.policy.default_effort

    @property
    def include_reasoning(self) -> bool:
        return self.policy.include_reasoning

    def apply(self, asked: Optional[Effort], thinking_budget: Optional[int] = None) -> AppliedReasoning:
        """The reasoning of one request: ``asked`` (else the default), told to the model as the format maps
        it, with the client's ``thinking_budget`` or the policy's budget for the level. A client budget on a
        level that does not think is a 400."""
        effort = asked or self.policy.default_effort
        model_effort = self._model_effort[effort]
        thinks = model_effort != NO_THINKING
        if thinking_budget is not None and not thinks:
            raise InvalidRequestError(
                f"thinking_budget needs reasoning, and reasoning_effort '{effort}' turns it off; "
                "send reasoning_effort low, medium or high with it.",
                param="thinking_budget",
            )
        if thinking_budget is None or not thinks:
            return AppliedReasoning(effort, model_effort, self.policy.budgets.get(effort) if thinks else None)
        charged = self.level_for(model_effort, thinking_budget)
        return AppliedReasoning(effort, model_effort, thinking_budget,
                                charged if effort_rank(charged) > effort_rank(effort) else None)

    def level_for(self, model_effort: str, budget: Optional[int]) -> Effort:
        """The lowest client level whose policy lets the model think as long as ``model_effort`` with
        ``budget`` (``None``: unbounded) does; the top level when none does."""
        rank = self.format.reasoning_levels.index(model_effort)
        for level, told_rank, cap in self._thinking:
            if told_rank >= rank and (cap is None or (budget is not None and budget <= cap)):
                return level
        return EFFORTS[-1]

    def largest_budget(self, model_effort: str, ceiling: Effort) -> Optional[int]:
        """The largest thinking budget charged at ``ceiling`` or below when the model is told ``model_effort``
        (``None``: unbounded; 0: none at all), for a route's refusal."""
        rank, top = self.format.reasoning_levels.index(model_effort), effort_rank(ceiling)
        caps = [cap for level, told_rank, cap in self._thinking if told_rank >= rank and effort_rank(level) <= top]
        if any(cap is None for cap in caps):
            return None
        return max((cap for cap in caps if cap is not None), default=0)
