"""Which buckets a call draws from, the OpenAI duration format of the reset headers, and the in-memory
bucket arithmetic on a fake clock."""

from __future__ import annotations

import dataclasses

import pytest

from unimodel.engines.base import GenerationRequest
from unimodel.errors import InvalidRequestError, RateLimitError
from unimodel.gateway.limits import Decision, LimitDefaults, MemoryStore, go_duration, plan_for, rate_limit_headers
from unimodel.gateway.limits.policy import is_high_reasoning, store_name
from unimodel.service.context import Caller

REQ = GenerationRequest(completion_id="r", served_model="m", messages=[])


def req(**kw: object) -> GenerationRequest:
    return dataclasses.replace(REQ, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (0.0004, "1ms"), (0.02, "20ms"), (0.999, "999ms"), (1, "1s"), (1.5, "1.5s"), (59.9991, "1m0s"),
    (60, "1m0s"), (360, "6m0s"), (90.25, "1m30.25s"), (3723, "1h2m3s"), (-3, "0s"),
])
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text


def test_no_limit_configured_is_no_plan() -> None:
    assert plan_for("k", Caller(name="k"), "u", req(effort="high"), LimitDefaults()) is None


def test_buckets_of_a_high_reasoning_call_from_a_user() -> None:
    defaults = LimitDefaults(rpm=10, tpm=1000, user_rpm=2, user_tpm=300, high_reasoning_rpm=1,
                             high_reasoning_tpm=500, max_concurrent=4)
    plan = plan_for("k", Caller(name="k"), "alice", req(effort="high", max_tokens=200), defaults)
    assert plan is not None
    assert [(b.unit, b.scope, b.limit, b.cost) for b in plan.buckets] == [
        ("requests", "key", 10, 1), ("requests", "user", 2, 1), ("requests", "high reasoning", 1, 1),
        ("tokens", "key", 1000, 200), ("tokens", "user", 300, 200), ("tokens", "high reasoning", 500, 200)]
    assert all(b.id.startswith("{k}:") for b in plan.buckets) and "alice" not in "".join(b.id for b in plan.buckets)
    assert plan.concurrency_id == "{k}:inflight" and plan.max_concurrent == 4
    low = plan_for("k", Caller(name="k"), None, req(effort="medium"), defaults)
    assert low is not None and [b.scope for b in low.buckets] == ["key", "key"]


def test_reservation_defaults_are_clamped_and_an_explicit_excess_is_refused() -> None:
    defaults = LimitDefaults(tpm=100, token_reservation=4096)
    plan = plan_for("k", Caller(), None, req(), defaults)
    assert plan is not None and plan.buckets[0].cost == 100
    plan = plan_for("k", Caller(), None, req(default_max_tokens=30), defaults)
    assert plan is not None and plan.buckets[0].cost == 30
    with pytest.raises(InvalidRequestError) as err:
        plan_for("k", Caller(), None, req(max_tokens=101), defaults)
    assert err.value.param == "max_tokens"


def test_a_keys_zero_is_a_refusal_and_its_own_values_win() -> None:
    defaults = LimitDefaults(rpm=5)
    with pytest.raises(RateLimitError) as err:
        plan_for("k", Caller(name="k", rpm=0), None, req(), defaults)
    assert err.value.retry_after is None and "no quota for requests" in err.value.message
    plan = plan_for("k", Caller(name="k", rpm=50), None, req(), defaults)
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


def test_headers_report_the_tightest_bucket_and_the_refused_one_first() -> None:
    plan = plan_for("k", Caller(), "u", req(max_tokens=10), LimitDefaults(rpm=100, user_rpm=5, tpm=1000))
    assert plan is not None
    headers = rate_limit_headers(plan, Decision(True, (90.0, 3.0, 500.0)))
    assert headers == {"x-ratelimit-limit-requests": "5", "x-ratelimit-remaining-requests": "3",
                       "x-ratelimit-reset-requests": "24s", "x-ratelimit-limit-tokens": "1000",
                       "x-ratelimit-remaining-tokens": "500", "x-ratelimit-reset-tokens": "30s"}
    refused = rate_limit_headers(plan, Decision(False, (0.5, 4.0, 500.0)))
    assert refused["x-ratelimit-limit-requests"] == "100" and refused["x-ratelimit-remaining-requests"] == "0"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_memory_buckets_refill_settle_into_debt_and_are_swept() -> None:
    clock = Clock()
    store = MemoryStore(clock)
    plan = plan_for("k", Caller(), None, req(max_tokens=60), LimitDefaults(tpm=120))
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
    [memory] = limits_stages(Settings(user_tpm=10))
    assert isinstance(memory.store, MemoryStore)  # type: ignore[attr-defined]
    [shared] = limits_stages(Settings(rpm=4, redis="redis://127.0.0.1:1/0", limits_on_redis_failure="closed"))
    assert isinstance(shared.store, RedisStore) and shared.on_store_failure == "closed"  # type: ignore[attr-defined]


def test_a_named_keys_own_limit_turns_the_stage_on() -> None:
    from unimodel.config import Settings
    from unimodel.gateway.keyhash import hash_key
    from unimodel.compose import limits_stages
    from unimodel.gateway.policy import KeyPolicy

    key = KeyPolicy(name="team-a", key_hash=hash_key("sk-test-secret"), max_concurrent=2)
    assert len(limits_stages(Settings(keys=[key]))) == 1
