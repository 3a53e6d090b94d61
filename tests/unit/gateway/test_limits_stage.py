"""The limits stage over both stores (in memory, and a real Redis): requests and tokens per window, per user,
the high-reasoning quota, in-flight caps, settlement at the end of a request however it ends, the headers."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

import pytest

from tests.unit.gateway.limits_support import Refuse, UsageEngine, ask, service, start
from tests.support.flush_rules import sse_frames
from unimodel.gateway.limits import LimitDefaults, LimitsStage, LimitStore, MemoryStore
from unimodel.gateway.limits.redis_store import RedisStore
from unimodel.service.context import Caller

if TYPE_CHECKING:
    from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.timeout(60)

StoreFactory = Callable[[], LimitStore]
PROMPT = 6  # the estimate of the prompt "hello there": 11 bytes / 4 → 3 tokens, and 3 for its message
DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")


@pytest.fixture(params=["memory", "redis"])
async def new_store(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    if request.param == "memory":
        yield MemoryStore
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = f"test-{uuid.uuid4().hex[:10]}:"  # each test its own keys on the shared server
    made: list[RedisStore] = []

    def make() -> LimitStore:
        made.append(RedisStore(server.url, prefix, timeout_s=2.0))
        return made[-1]

    yield make
    for store in made:
        await store.aclose()


async def limits(new_store: StoreFactory, **defaults: Any) -> LimitsStage:
    stage = LimitsStage(LimitDefaults(**defaults), new_store())
    await stage.start()
    return stage


async def test_requests_per_window_refused_with_retry_after_and_openai_headers(new_store: StoreFactory) -> None:
    svc = service(UsageEngine(), await limits(new_store, rpm=3))
    answers = [await ask(svc) for _ in range(4)]
    assert [a.status for a in answers] == [200, 200, 200, 429]
    assert [a.remaining_requests for a in answers] == [2, 1, 0, 0]
    assert all(a.headers["x-ratelimit-limit-requests"] == "3" for a in answers)
    assert all(DURATION.match(a.headers["x-ratelimit-reset-requests"]) for a in answers)
    assert "x-ratelimit-limit-tokens" not in answers[0].headers  # no token limit, no token headers
    refused = answers[3]
    assert refused.error is not None and refused.error.code == "rate_limit_exceeded"
    assert refused.headers["Retry-After"] == "20"  # one request back every 60 / 3 s
    assert 19_000 < int(refused.headers["retry-after-ms"]) <= 20_000
    assert "requests per minute on key 'k1': limit 3" in refused.error.message
    assert re.fullmatch(r"1m0s|5\d(\.\d+)?s", refused.headers["x-ratelimit-reset-requests"])  # ~60 s to full


async def test_the_bucket_refills_continuously(new_store: StoreFactory) -> None:
    svc = service(UsageEngine(), await limits(new_store, rpm=2, window_s=1.0))
    assert [(await ask(svc)).status for _ in range(3)] == [200, 200, 429]
    await asyncio.sleep(0.6)  # one request's worth (0.5 s) has come back, not two
    assert [(await ask(svc)).status for _ in range(2)] == [200, 429]


async def test_tokens_reserve_the_prompt_and_max_tokens_and_settle_with_real_usage(new_store: StoreFactory) -> None:
    svc = service(UsageEngine(prompt=5, completion=3), await limits(new_store, tpm=100))
    first = await ask(svc, max_tokens=50)
    assert first.status == 200 and first.remaining_tokens == 100 - PROMPT - 50  # reserved while it ran
    second = await ask(svc, max_tokens=50)  # the first used 8: 92 left
    assert second.status == 200 and second.remaining_tokens == 92 - PROMPT - 50
    third = await ask(svc, max_tokens=90)  # 84 left: not enough for 6 + 90 → wait for 12 tokens' refill
    assert third.status == 429 and third.remaining_tokens == 84
    assert third.error is not None and "tokens per minute" in third.error.message
    assert third.headers["Retry-After"] == "8"  # 12 tokens at 100 / 60 s: 7.2 s, rounded up
    assert (await ask(svc)).status == 429  # no max_tokens: the default reservation (4096) clamped to 100 > 84


async def test_a_request_without_max_tokens_reserves_the_default_reservation(new_store: StoreFactory) -> None:
    svc = service(UsageEngine(prompt=5, completion=3), await limits(new_store, tpm=1000, token_reservation=300))
    first = await ask(svc)
    assert first.remaining_tokens == 1000 - PROMPT - 300
    assert (await ask(svc)).remaining_tokens == 1000 - 8 - PROMPT - 300


async def test_max_tokens_larger_than_the_bucket_is_a_400(new_store: StoreFactory) -> None:
    svc = service(UsageEngine(), await limits(new_store, tpm=100))
    answer = await ask(svc, max_tokens=101)
    assert answer.status == 400 and answer.error is not None and answer.error.param == "max_tokens"
    assert "100 tokens per minute" in answer.error.message


async def test_a_stream_that_fails_gives_back_what_it_did_not_use(new_store: StoreFactory) -> None:
    engine = UsageEngine(n=6, delta="abcd")
    engine.fail_after = 2  # two deltas (8 chars) sent, then the upstream fails; no usage reported
    svc = service(engine, await limits(new_store, tpm=1000))
    call, prepared = await start(svc, max_tokens=500, stream=True)
    frames = sse_frames([f async for f in svc.stream(prepared)])
    assert b"upstream" in frames[-2]  # the error frame
    # no usage came: the service's estimate, the prompt's 6 tokens + 8 bytes streamed / 4 → 8 tokens used; the
    # rest of the reservation came back
    assert call.ctx.usage is not None and call.ctx.usage.estimated and call.ctx.usage.total_tokens == PROMPT + 2
    assert (await ask(svc, max_tokens=10)).remaining_tokens == 1000 - (PROMPT + 2) - (PROMPT + 10)


async def test_an_engine_that_fails_before_any_output_is_charged_nothing(new_store: StoreFactory) -> None:
    engine = UsageEngine(n=3)
    engine.fail_after = 0  # refused by the upstream before a token: the model did no work we can see
    svc = service(engine, await limits(new_store, tpm=1000))
    failed = await ask(svc, max_tokens=500)
    assert failed.status == 502 and failed.call is not None and failed.call.ctx.usage is None
    engine.fail_after = None
    assert (await ask(svc, max_tokens=10)).remaining_tokens == 1000 - (PROMPT + 10)


async def test_a_client_that_leaves_gives_back_what_it_did_not_use(new_store: StoreFactory) -> None:
    engine = UsageEngine(n=4)
    engine.gate = asyncio.Event()  # the stream waits after its first delta
    svc = service(engine, await limits(new_store, tpm=1000, max_concurrent=1))
    _, prepared = await start(svc, max_tokens=500, stream=True)
    async with aclosing(svc.stream(prepared)) as frames:
        opening = await anext(frames)  # the role frame and the first delta, in one write
        assert b'"content"' in opening.split(b"\n\n")[1]
    # the client left: the prompt's 6 + 4 bytes / 4 → 7 tokens kept, the rest back, and its slot is free again
    engine.gate = None
    answer = await ask(svc, max_tokens=10)
    assert answer.status == 200 and answer.remaining_tokens == 1000 - (PROMPT + 1) - (PROMPT + 10)


async def test_a_call_refused_by_a_later_stage_counts_as_a_request_and_gives_back_its_tokens_and_slot(
        new_store: StoreFactory) -> None:
    stage = await limits(new_store, rpm=3, tpm=100, max_concurrent=1)
    svc = service(UsageEngine(), stage, Refuse())
    for left in (2, 1):
        answer = await ask(svc, max_tokens=74)
        assert answer.status == 409
        assert answer.remaining_requests == left  # a request admitted counts, whatever happens next
        assert answer.remaining_tokens == 100 - PROMPT - 74  # taken while it was checked, given back since
    allowed = await ask(service(UsageEngine(), stage), max_tokens=74)
    assert allowed.status == 200  # the slot is free, and no token stayed taken
    assert allowed.remaining_requests == 0 and allowed.remaining_tokens == 100 - PROMPT - 74


async def test_per_user_limits_are_separate_from_each_other_and_from_callers_without_user(
        new_store: StoreFactory) -> None:
    svc = service(UsageEngine(), await limits(new_store, user_rpm=2))
    assert [(await ask(svc, user="alice")).status for _ in range(3)] == [200, 200, 429]
    refused = await ask(svc, user="alice")
    assert refused.error is not None and "requests per minute per user" in refused.error.message
    assert "alice" not in refused.error.message
    assert (await ask(svc, user="bob")).status == 200
    assert [(await ask(svc)).status for _ in range(3)] == [200, 200, 200]  # no user: no per-user bucket


async def test_user_buckets_are_scoped_to_their_key(new_store: StoreFactory) -> None:
    stage = await limits(new_store, user_rpm=1)
    one, two = service(UsageEngine(), stage, caller=Caller(name="k1")), service(UsageEngine(), stage,
                                                                                caller=Caller(name="k2"))
    assert (await ask(one, user="u")).status == 200
    assert (await ask(two, user="u")).status == 200
    assert (await ask(one, user="u")).status == 429


async def test_high_reasoning_quota_lets_effort_none_through_when_spent(new_store: StoreFactory) -> None:
    svc = service(UsageEngine(), await limits(new_store, rpm=10, high_reasoning_rpm=1))
    assert (await ask(svc, reasoning_effort="high")).status == 200
    spent = await ask(svc, reasoning_effort="high")
    assert spent.status == 429 and spent.error is not None
    assert "requests per minute for high reasoning" in spent.error.message
    assert "below 'high' do not count" in spent.error.message
    assert spent.headers["x-ratelimit-limit-requests"] == "1"  # the binding bucket is the one reported
    for effort in ("none", "low", "medium"):
        answer = await ask(svc, reasoning_effort=effort)
        assert answer.status == 200, effort
        assert answer.headers["x-ratelimit-limit-requests"] == "10"
    # a high-reasoning request counts against the key's own rpm too, the refused one as well: the key's
    # requests are counted before the body is read, so before its effort is known
    assert (await ask(svc)).remaining_requests == 10 - 2 - 3 - 1


async def test_high_reasoning_threshold_is_configurable(new_store: StoreFactory) -> None:
    svc = service(UsageEngine(), await limits(new_store, high_reasoning_rpm=1, high_reasoning_effort="medium"))
    assert (await ask(svc, reasoning_effort="medium")).status == 200
    assert (await ask(svc, reasoning_effort="high")).status == 429
    assert (await ask(svc, reasoning_effort="low")).status == 200


async def test_high_reasoning_tokens_quota(new_store: StoreFactory) -> None:
    svc = service(UsageEngine(prompt=50, completion=50), await limits(new_store, high_reasoning_tpm=150))
    assert (await ask(svc, reasoning_effort="high", max_tokens=100)).status == 200  # used 100
    assert (await ask(svc, reasoning_effort="high", max_tokens=100)).status == 429  # 50 left
    assert (await ask(svc, reasoning_effort="none", max_tokens=100)).status == 200
    too_big = await ask(svc, reasoning_effort="high", max_tokens=151)
    assert too_big.status == 400 and too_big.error is not None
    assert "lower reasoning_effort" in too_big.error.message


async def test_concurrency_cap_released_on_success_failure_and_abandon(new_store: StoreFactory) -> None:
    engine = UsageEngine(n=3)
    svc = service(engine, await limits(new_store, max_concurrent=2))
    held = [await start(svc, stream=True) for _ in range(2)]
    refused = await ask(svc)
    assert refused.status == 429 and refused.error is not None
    assert "at most 2 at a time" in refused.error.message and refused.headers["Retry-After"] == "1"
    assert "x-ratelimit-limit-requests" not in refused.headers  # no request bucket, no request headers
    # one finishes normally, one is abandoned by its client
    [_ async for _ in svc.stream(held[0][1])]
    async with aclosing(svc.stream(held[1][1])) as frames:
        await anext(frames)
    engine.fail_after = 1
    assert (await ask(svc)).status == 502  # failed mid-way, released too
    engine.fail_after = None
    again = [await start(svc, stream=True) for _ in range(2)]
    assert (await ask(svc)).status == 429
    for _, prepared in again:
        [_ async for _ in svc.stream(prepared)]


async def test_a_keys_own_limits_win_over_the_defaults(new_store: StoreFactory) -> None:
    stage = await limits(new_store, rpm=1)
    generous = service(UsageEngine(), stage, caller=Caller(name="gold", rpm=3))
    assert [(await ask(generous)).status for _ in range(4)] == [200, 200, 200, 429]
    default = service(UsageEngine(), stage, caller=Caller(name="plain"))
    assert [(await ask(default)).status for _ in range(2)] == [200, 429]


async def test_a_quota_of_zero_refuses_without_retry(new_store: StoreFactory) -> None:
    svc = service(UsageEngine(), await limits(new_store), caller=Caller(name="k1", high_reasoning_rpm=0))
    refused = await ask(svc, reasoning_effort="high")
    assert refused.status == 429 and refused.headers["x-should-retry"] == "false"
    assert "Retry-After" not in refused.headers
    assert (await ask(svc, reasoning_effort="none")).status == 200


async def test_no_limit_means_no_headers_and_no_state(new_store: StoreFactory) -> None:
    svc = service(UsageEngine(), await limits(new_store, high_reasoning_rpm=5))
    answer = await ask(svc, reasoning_effort="none")
    assert answer.status == 200 and not any(h.startswith("x-ratelimit") for h in answer.headers)
    assert answer.call is not None and "limits" not in answer.call.stage_states


async def test_an_idempotent_replay_is_charged_no_tokens(new_store: StoreFactory) -> None:
    from unimodel.service.pipeline import Call, Stage

    class Replayed(Stage):
        name = "idempotency"

        async def enter(self, call: Call) -> None:
            call.ctx.idempotency = "replayed"

    svc = service(UsageEngine(prompt=40, completion=40), await limits(new_store, tpm=100), Replayed())
    assert (await ask(svc, max_tokens=50)).status == 200
    assert (await ask(svc, max_tokens=50)).remaining_tokens == 100 - PROMPT - 50


def test_status_names_the_store() -> None:
    stage = LimitsStage(LimitDefaults(rpm=1), MemoryStore())
    assert stage.status()["store"] == "memory" and stage.status()["on_store_failure"] == "open"
