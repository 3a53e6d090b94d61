"""Which buckets a call draws from, the OpenAI duration format of the reset headers, and the in-memory
bucket arithmetic on a fake clock."""

from __future__ import annotations

import dataclasses

import pytest

from unimodel.engines.base import GenerationRequest
from unimodel.errors import InvalidRequestError, RateLimitError
from unimodel.gateway.limits import (
    Decision,
    LimitDefaults,
    MemoryStore,
    Plan,
    go_duration,
    rate_limit_headers,
    request_plan,
    token_plan,
)
from unimodel.gateway.limits.policy import is_high_reasoning, store_name
from unimodel.service.context import Caller

REQ = GenerationRequest(completion_id="r", served_model="m", messages=[])


def req(**kw: object) -> GenerationRequest:
    return dataclasses.replace(REQ, **kw)  # type: ignore[arg-type]


def tokens(key: str, caller: Caller, user: str | None, request: GenerationRequest, defaults: LimitDefaults,
           prompt: int = 0) -> Plan | None:
    """The second part's plan, charged at the request's own effort, with a prompt estimated at ``prompt``."""
    return token_plan(key, caller, user, request, defaults, effort=request.effort, prompt_tokens=lambda: prompt)


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (0.0004, "1ms"), (0.02, "20ms"), (0.999, "999ms"), (1, "1s"), (1.5, "1.5s"), (59.9991, "1m0s"),
    (60, "1m0s"), (360, "6m0s"), (90.25, "1m30.25s"), (3723, "1h2m3s"), (-3, "0s"),
])
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_no_limit_configured_is_no_plan() -> None:
    assert request_plan("k", Caller(name="k"), LimitDefaults()) is None
    assert tokens("k", Caller(name="k"), "u", req(effort="high"), LimitDefaults()) is None


def test_buckets_of_a_high_reasoning_call_from_a_user() -> None:
    defaults = LimitDefaults(rpm=10, tpm=1000, user_rpm=2, user_tpm=300, high_reasoning_rpm=1,
                             high_reasoning_tpm=500, max_concurrent=4)
    first = request_plan("k", Caller(name="k"), defaults)  # before the body is read
    assert first is not None and [(b.unit, b.scope, b.limit, b.cost) for b in first.buckets] == [
        ("requests", "key", 10, 1)]
    assert first.concurrency_id == "{k}:inflight" and first.max_concurrent == 4
    plan = tokens("k", Caller(name="k"), "alice", req(effort="high", max_tokens=200), defaults, prompt=50)
    assert plan is not None
    assert [(b.unit, b.scope, b.limit, b.cost) for b in plan.buckets] == [
        ("requests", "user", 2, 1), ("requests", "high reasoning", 1, 1),
        ("tokens", "key", 1000, 250), ("tokens", "user", 300, 250), ("tokens", "high reasoning", 500, 250)]
    assert plan.concurrency_id is None  # the slot is the first part's
    ids = [b.id for b in (*first.buckets, *plan.buckets)]
    assert all(i.startswith("{k}:") for i in ids) and "alice" not in "".join(ids)
    low = tokens("k", Caller(name="k"), None, req(effort="medium"), defaults)
    assert low is not None and [b.scope for b in low.buckets] == ["key"]


def test_the_level_charged_decides_the_high_reasoning_quota() -> None:
    defaults = LimitDefaults(high_reasoning_rpm=1)
    asked_low = req(effort="low", thinking_budget=1_000_000)
    assert token_plan("k", Caller(), None, asked_low, defaults, effort="low", prompt_tokens=lambda: 0) is None
    charged = token_plan("k", Caller(), None, asked_low, defaults, effort="high", prompt_tokens=lambda: 0)
    assert charged is not None and [b.scope for b in charged.buckets] == ["high reasoning"]


def test_reservation_covers_the_prompt_defaults_are_clamped_and_an_explicit_excess_is_refused() -> None:
    defaults = LimitDefaults(tpm=100, token_reservation=4096)
    plan = tokens("k", Caller(), None, req(), defaults, prompt=10)
    assert plan is not None and plan.buckets[0].cost == 100
    plan = tokens("k", Caller(), None, req(default_max_tokens=30), defaults, prompt=10)
    assert plan is not None and plan.buckets[0].cost == 40
    plan = tokens("k", Caller(), None, req(max_tokens=1), defaults, prompt=10_000)
    assert plan is not None and plan.buckets[0].cost == 100  # a prompt beyond the bucket needs it full
    with pytest.raises(InvalidRequestError) as err:
        tokens("k", Caller(), None, req(max_tokens=101), defaults)
    assert err.value.param == "max_tokens"


def test_n_choices_reserve_n_answers_and_the_prompt_once() -> None:
    defaults = LimitDefaults(tpm=1000, token_reservation=50)
    plan = tokens("k", Caller(), None, req(max_tokens=100, n=3), defaults, prompt=10)
    assert plan is not None and plan.buckets[0].cost == 10 + 3 * 100
    plan = tokens("k", Caller(), None, req(default_max_tokens=30, n=2), defaults, prompt=10)
    assert plan is not None and plan.buckets[0].cost == 10 + 2 * 30
    plan = tokens("k", Caller(), None, req(n=4), defaults, prompt=10)
    assert plan is not None and plan.buckets[0].cost == 10 + 4 * 50
    # n cannot buy n times a key's tokens: max_tokens fits the bucket, max_tokens × n does not
    with pytest.raises(InvalidRequestError) as err:
        tokens("k", Caller(), None, req(max_tokens=400, n=3), defaults)
    assert err.value.param == "max_tokens" and "400 × 3 = 1200" in err.value.message and " or n" in err.value.message


def test_the_prompt_is_estimated_only_when_a_token_limit_applies() -> None:
    def never() -> int:
        raise AssertionError("estimated without a token limit")

    plan = token_plan("k", Caller(), "u", req(), LimitDefaults(user_rpm=3), effort="none", prompt_tokens=never)
    assert plan is not None and [b.unit for b in plan.buckets] == ["requests"]


def test_a_keys_zero_is_a_refusal_and_its_own_values_win() -> None:
    defaults = LimitDefaults(rpm=5)
    with pytest.raises(RateLimitError) as err:
        request_plan("k", Caller(name="k", rpm=0), defaults)
    assert err.value.retry_after is None and "no quota for requests" in err.value.message
    with pytest.raises(RateLimitError, match="no quota for tokens"):
        request_plan("k", Caller(name="k", tpm=0), defaults)  # no body needed to know it
    with pytest.raises(RateLimitError, match="no quota for high-reasoning requests"):
        tokens("k", Caller(name="k", high_reasoning_rpm=0), None, req(effort="high"), defaults)
    plan = request_plan("k", Caller(name="k", rpm=50), defaults)
    assert plan is not None and plan.buckets[0].limit == 50


def test_effort_order_and_odd_key_names() -> None:
    assert is_high_reasoning("high", "high") and not is_high_reasoning("medium", "high")
    assert is_high_reasoning("low", "low") and is_high_reasoning("none", "none")
    assert not is_high_reasoning("none", "minimal")
    assert store_name("key-1") == "key-1"
    odd = store_name("a}{b c")
    assert "{" not in odd and "}" not in odd and odd == store_name("a}{b c")
    with pytest.raises(ValueError):
        LimitDefaults(high_reasoning_effort="extreme")


def test_headers_report_the_tightest_bucket_of_both_parts_and_the_refused_one_first() -> None:
    defaults = LimitDefaults(rpm=100, user_rpm=5, tpm=1000)
    first, plan = request_plan("k", Caller(), defaults), tokens("k", Caller(), "u", req(max_tokens=10), defaults)
    assert first is not None and plan is not None
    before = (first, Decision(True, (90.0,)))
    headers = rate_limit_headers(plan, Decision(True, (3.0, 500.0)), before)
    assert headers == {"x-ratelimit-limit-requests": "5", "x-ratelimit-remaining-requests": "3",
                       "x-ratelimit-reset-requests": "24s", "x-ratelimit-limit-tokens": "1000",
                       "x-ratelimit-remaining-tokens": "500", "x-ratelimit-reset-tokens": "30s"}
    assert rate_limit_headers(plan, Decision(True, (95.0, 500.0)), before)["x-ratelimit-limit-requests"] == "100"
    refused = rate_limit_headers(plan, Decision(False, (3.0, 5.0)), (first, Decision(True, (0.5,))))
    assert refused["x-ratelimit-limit-tokens"] == "1000" and refused["x-ratelimit-remaining-tokens"] == "5"
    assert refused["x-ratelimit-limit-requests"] == "100"  # the tightest; the user's bucket was not short
    alone = rate_limit_headers(first, Decision(False, (0.5,)))
    assert alone["x-ratelimit-limit-requests"] == "100" and alone["x-ratelimit-remaining-requests"] == "0"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_buckets_refill_settle_into_debt_and_are_swept() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    plan = tokens("k", Caller(), None, req(max_tokens=60), LimitDefaults(tpm=120))
    assert plan is not None
    assert (await store.acquire(plan, "")).levels == (60.0,)
    await store.release(plan, [-40.0], None)  # it used 100 of its 60: 40 more taken
    assert (await store.acquire(plan, "")).allowed is False  # at 20
    clock.now += 30  # 60 back
    decision = await store.acquire(plan, "")
    assert decision.allowed and decision.levels == (20.0,)
    await store.release(plan, [60.0], None)
    clock.now += 60
    store._sweep(clock.now)
    assert store.status()["buckets"] == 0


def test_the_stage_is_built_only_when_a_limit_is_set() -> None:
    from unimodel.config import Settings
    from unimodel.compose import limits_stages
    from unimodel.gateway.limits.redis_store import RedisStore

    assert limits_stages(Settings()) == []
    [memory] = limits_stages(Settings(user_tpm=10, limits_image_tokens=99))
    assert isinstance(memory.store, MemoryStore) and memory.estimator.image_tokens == 99
    [shared] = limits_stages(Settings(rpm=4, redis="redis://127.0.0.1:1/0", limits_on_redis_failure="closed"))
    assert isinstance(shared.store, RedisStore) and shared.on_store_failure == "closed"
    assert shared.requests.limits is shared  # the first part shares the store and the counts


def test_a_named_keys_own_limit_turns_the_stage_on() -> None:
    from unimodel.config import Settings
    from unimodel.gateway.keyhash import hash_key
    from unimodel.compose import limits_stages
    from unimodel.gateway.policy import KeyPolicy

    key = KeyPolicy(name="team-a", key_hash=hash_key("sk-test-secret"), max_concurrent=2)
    assert len(limits_stages(Settings(keys=[key]))) == 1
