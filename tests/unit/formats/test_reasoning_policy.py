"""The reasoning policy in formats/: the format's levels, the default mapping, budgets, and the checks."""

from __future__ import annotations

from typing import ClassVar

import pytest

from unimodel.compose import compose
from unimodel.config import Settings
from unimodel.errors import ConfigError, InvalidRequestError
from unimodel.formats.mistral import MistralFormat
from unimodel.formats.reasoning import AppliedReasoning, ModelReasoning, ReasoningPolicy
from unimodel.formats.registry import get_format
from unimodel.protocol.effort import EFFORTS, effort_rank


def test_one_effort_type_carries_the_five_levels_in_order() -> None:
    assert EFFORTS == ("none", "minimal", "low", "medium", "high")
    assert [effort_rank(e) for e in EFFORTS] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="unknown reasoning effort"):
        effort_rank("extreme")


@pytest.mark.parametrize("family", ["mistral", "think-tags"])
def test_a_two_level_model_gets_the_nearest_level_and_a_budget(family: str) -> None:
    reasoning = ModelReasoning(ReasoningPolicy(), get_format(family))
    assert [reasoning.apply(e) for e in EFFORTS] == [
        AppliedReasoning("none", "none", None), AppliedReasoning("minimal", "none", None),
        AppliedReasoning("low", "high", 1024), AppliedReasoning("medium", "high", 4096),
        AppliedReasoning("high", "high", None)]
    assert reasoning.apply(None) == AppliedReasoning("none", "none", None)  # the policy's default


def test_a_format_that_knows_more_levels_is_told_them() -> None:
    class ThreeLevels(MistralFormat):
        reasoning_levels: ClassVar[tuple[str, ...]] = ("none", "low", "high")

    reasoning = ModelReasoning(ReasoningPolicy(budgets={}), ThreeLevels())
    assert [reasoning.apply(e).model_effort for e in EFFORTS] == ["none", "none", "low", "high", "high"]


def test_the_policy_overrides_the_mapping_and_the_client_budget_wins() -> None:
    reasoning = ModelReasoning(ReasoningPolicy(model_effort={"low": "none"}, default_effort="medium"),
                               get_format("mistral"))
    assert reasoning.apply("low") == AppliedReasoning("low", "none", None)
    assert reasoning.apply(None) == AppliedReasoning("medium", "high", 4096)
    assert reasoning.apply("high", thinking_budget=64).budget == 64
    with pytest.raises(InvalidRequestError, match="thinking_budget needs reasoning") as info:
        reasoning.apply("none", thinking_budget=64)
    assert info.value.param == "thinking_budget"


def test_a_level_the_model_does_not_know_is_a_start_up_error() -> None:
    with pytest.raises(ValueError, match="does not know"):
        ModelReasoning(ReasoningPolicy(model_effort={"high": "max"}), get_format("mistral"))
    settings = Settings(engine="upstream", upstream="http://127.0.0.1:9/v1", request_log=False,
                        reasoning_per_model={"m": {"model_effort": {"high": "max"}}})
    with pytest.raises(ConfigError, match="reasoning_per_model.m"):
        compose(settings)


def test_a_client_budget_is_charged_at_the_level_whose_policy_covers_it() -> None:
    reasoning = ModelReasoning(ReasoningPolicy(), get_format("mistral"))  # low 1024, medium 4096, high unbounded
    assert reasoning.apply("low", thinking_budget=1024).charged == "low"
    assert reasoning.apply("low", thinking_budget=1025).charged == "medium"
    assert reasoning.apply("low", thinking_budget=1_000_000) == AppliedReasoning("low", "high", 1_000_000, "high")
    assert reasoning.apply("medium", thinking_budget=4097).charged == "high"
    assert reasoning.apply("high", thinking_budget=10).charged == "high"  # never below the level asked
    assert reasoning.apply("low").charged == "low" and reasoning.apply("none").charged == "none"
    report = reasoning.apply("low", thinking_budget=5000).report()
    assert report["effort"] == "low" and report["charged_effort"] == "high"
    assert "charged_effort" not in reasoning.apply("low").report()
    assert reasoning.largest_budget("high", "low") == 1024 and reasoning.largest_budget("high", "medium") == 4096
    assert reasoning.largest_budget("high", "high") is None


def test_the_charge_counts_the_model_level_and_an_operators_budgets() -> None:
    class ThreeLevels(MistralFormat):
        reasoning_levels: ClassVar[tuple[str, ...]] = ("none", "low", "high")

    # low is the model's own low, with no budget of its own: unbounded at that level is still low's policy
    reasoning = ModelReasoning(ReasoningPolicy(budgets={"medium": 4096}), ThreeLevels())
    assert reasoning.apply("low", thinking_budget=10**6).charged == "low"
    strict = ModelReasoning(ReasoningPolicy(budgets={"low": 100, "medium": 4096, "high": 8192}), ThreeLevels())
    assert strict.apply("low", thinking_budget=5000).charged == "high"  # medium's 4096 is short, high's 8192 not
    assert strict.apply("low", thinking_budget=4000).charged == "medium"  # the model's high at 4096 covers it
    assert strict.apply("low", thinking_budget=9000).charged == "high"  # beyond every budget: the top level
