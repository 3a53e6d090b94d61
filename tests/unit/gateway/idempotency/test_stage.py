"""The idempotency stage against both stores (memory, a real Redis): one engine call per key and body,
replays through the same encoder, conflicts, failures releasing the key, TTLs, scoping and bounds."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
import pytest

from unimodel.errors import (
    IdempotencyKeyInUseError,
    IdempotencyKeyReusedError,
    InvalidRequestError,
    UpstreamError,
)
from unimodel.gateway.idempotency.stage import REPLAYED_HEADER
from tests.unit.gateway.idempotency.conftest import BODY, CountingEngine, Harness

MakeHarness = Callable[..., Awaitable[Harness]]
STREAM = {**BODY, "stream": True, "stream_options": {"include_usage": True}}


async def test_the_first_request_runs_and_a_repeat_replays_without_calling_the_engine(
        make_harness: MakeHarness) -> None:
    h = await make_harness()
    first_call = h.call()
    first = await h.complete(first_call)
    assert h.engine.calls == 1 and REPLAYED_HEADER not in first_call.response_headers
    assert first_call.ctx.idempotency == "first"
    again_call = h.call()
    again = await h.complete(again_call)
    assert h.engine.calls == 1
    assert again == first and again["id"] == "chatcmpl-req-1" and again_call.ctx.request_id == "req-2"
    assert again_call.response_headers[REPLAYED_HEADER] == "true"
    assert again_call.response_headers["X-Unimodel-Reasoning"] == first_call.response_headers["X-Unimodel-Reasoning"]
    assert again_call.ctx.usage == first_call.ctx.usage and again_call.ctx.finish_reason == "stop"
    assert h.stage.status()["replayed"] == 1


async def test_a_streamed_replay_restreams_the_same_chunks_with_the_same_id(make_harness: MakeHarness) -> None:
    h = await make_harness()
    first = await h.stream(h.call(STREAM))
    again_call = h.call(STREAM)
    again = await h.stream(again_call)
    assert h.engine.calls == 1
    assert again == first and len(first) > 5
    assert json.loads(first[0][len(b"data: "):])["id"] == "chatcmpl-req-1"
    assert again_call.response_headers[REPLAYED_HEADER] == "true"


async def test_without_the_header_every_request_runs_and_the_stage_keeps_nothing(make_harness: MakeHarness) -> None:
    h = await make_harness()
    for _ in range(2):
        call = h.call(key=None)
        await h.complete(call)
        assert "idempotency" not in call.stage_states and call.ctx.idempotency is None
    assert h.engine.calls == 2 and h.stage.status()["first"] == 0


async def test_the_same_key_with_another_body_is_a_409(make_harness: MakeHarness) -> None:
    h = await make_harness()
    await h.complete(h.call())
    other = {**BODY, "messages": [{"role": "user", "content": "something else"}]}
    with pytest.raises(IdempotencyKeyReusedError) as err:
        await h.complete(h.call(other))
    assert err.value.status_code == 409 and err.value.code == "idempotency_key_reused"
    with pytest.raises(IdempotencyKeyReusedError):  # stream is part of the body: documented choice
        await h.complete(h.call({**BODY, "stream": True}))
    assert h.engine.calls == 1


async def test_four_concurrent_duplicates_make_one_engine_call(make_harness: MakeHarness) -> None:
    h = await make_harness()
    h.engine.gate = asyncio.Event()
    calls = [h.call() for _ in range(4)]
    tasks = [asyncio.create_task(h.complete(c)) for c in calls]
    await asyncio.sleep(0.1)
    assert h.engine.calls == 1
    h.engine.gate.set()
    bodies = await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    assert h.engine.calls == 1
    assert all(b == bodies[0] for b in bodies)
    assert sorted(str(c.ctx.idempotency) for c in calls) == ["first"] + ["replayed"] * 3


async def test_a_different_body_while_the_first_runs_is_a_409_at_once(make_harness: MakeHarness) -> None:
    h = await make_harness()
    h.engine.gate = asyncio.Event()
    first = asyncio.create_task(h.complete(h.call()))
    await asyncio.sleep(0.05)
    with pytest.raises(IdempotencyKeyReusedError):
        await asyncio.wait_for(h.complete(h.call({**BODY, "user": "x"})), timeout=5)
    h.engine.gate.set()
    await first


async def test_in_flight_conflict_mode_answers_409_with_retry_after(make_harness: MakeHarness) -> None:
    h = await make_harness(in_flight="conflict", retry_after_s=2)
    h.engine.gate = asyncio.Event()
    first = asyncio.create_task(h.complete(h.call()))
    await asyncio.sleep(0.05)
    with pytest.raises(IdempotencyKeyInUseError) as err:
        await h.complete(h.call())
    assert err.value.status_code == 409 and err.value.code == "idempotency_key_in_use"
    assert err.value.headers() == {"Retry-After": "2"}
    h.engine.gate.set()
    await first
    await h.complete(h.call())  # once the first is done, the repeat replays
    assert h.engine.calls == 1


async def test_waiting_for_the_first_is_bounded(make_harness: MakeHarness) -> None:
    h = await make_harness(wait_s=0.3)
    h.engine.gate = asyncio.Event()
    first = asyncio.create_task(h.complete(h.call()))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    with pytest.raises(IdempotencyKeyInUseError):
        await h.complete(h.call())
    assert 0.25 < time.monotonic() - started < 3
    h.engine.gate.set()
    await first
    assert h.engine.calls == 1


async def test_a_failed_first_request_releases_the_key_and_a_retry_runs(make_harness: MakeHarness) -> None:
    h = await make_harness()
    h.engine.fail_next = True
    with pytest.raises(UpstreamError):
        await h.complete(h.call())
    body = await h.complete(h.call())  # the retry runs…
    assert h.engine.calls == 2 and body["choices"][0]["message"]["content"].startswith("c2.")
    await h.complete(h.call())  # …and is stored
    assert h.engine.calls == 2 and h.stage.status()["released"] == 1


async def test_a_failed_stream_and_an_abandoned_stream_release_the_key(make_harness: MakeHarness) -> None:
    h = await make_harness()
    h.engine.fail_next = True
    frames = await h.stream(h.call(STREAM))
    assert b'"error"' in frames[-2]
    stream = h.service.stream(await h.service.prepare(h.call(STREAM)))  # the client leaves after two frames
    await anext(stream)
    await anext(stream)
    await stream.aclose()
    assert h.engine.calls == 2
    await h.stream(h.call(STREAM))
    await h.stream(h.call(STREAM))
    assert h.engine.calls == 3 and h.stage.status()["released"] == 2


async def test_a_waiting_duplicate_runs_when_the_first_fails(make_harness: MakeHarness) -> None:
    h = await make_harness()
    h.engine.gate, h.engine.fail_next = asyncio.Event(), True
    first = asyncio.create_task(h.complete(h.call()))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(h.complete(h.call()))
    await asyncio.sleep(0.05)
    h.engine.gate.set()
    with pytest.raises(UpstreamError):
        await first
    body = await asyncio.wait_for(second, timeout=10)
    assert h.engine.calls == 2 and body["id"] == "chatcmpl-req-2"


async def test_stored_responses_expire_after_the_ttl(make_harness: MakeHarness) -> None:
    h = await make_harness(store={"ttl_s": 0.3})
    await h.complete(h.call())
    await h.complete(h.call())
    assert h.engine.calls == 1
    await asyncio.sleep(0.45)
    await h.complete(h.call())
    assert h.engine.calls == 2


async def test_keys_are_scoped_per_api_key(make_harness: MakeHarness) -> None:
    h = await make_harness(keys=("sk-one", "sk-two"))
    one = await h.complete(h.call(headers={"authorization": "Bearer sk-one"}))
    two = await h.complete(h.call(headers={"authorization": "Bearer sk-two"}))
    assert h.engine.calls == 2 and one["id"] != two["id"]
    again = await h.complete(h.call(headers={"authorization": "Bearer sk-two"}))
    assert h.engine.calls == 2 and again == two


@pytest.mark.parametrize("key", ["", "   ", "k" * 256, "clé", "tab\there", "nul\x00"])
async def test_a_malformed_key_is_a_400_naming_the_header(make_harness: MakeHarness, key: str) -> None:
    h = await make_harness()
    with pytest.raises(InvalidRequestError) as err:
        await h.complete(h.call(key=key))
    assert err.value.status_code == 400 and err.value.param == "Idempotency-Key"
    assert "Idempotency-Key" in err.value.message and h.engine.calls == 0


async def test_the_longest_key_and_spaces_inside_are_fine(make_harness: MakeHarness) -> None:
    h = await make_harness()
    for key in ("k" * 255, "a key with spaces ~!"):
        await h.complete(h.call(key=key))
        await h.complete(h.call(key=key))
    assert h.engine.calls == 2


async def test_a_response_over_the_size_bound_is_not_stored(make_harness: MakeHarness,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    h = await make_harness(CountingEngine(n=200), max_bytes=2048)
    with caplog.at_level("INFO", logger="unimodel.idempotency"):
        await h.complete(h.call())
    assert any("not stored" in r.getMessage() for r in caplog.records)
    await h.complete(h.call())
    assert h.engine.calls == 2 and h.stage.status()["not_stored_too_large"] == 2


async def test_replay_keeps_the_original_created_time(make_harness: MakeHarness,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    h = await make_harness()
    first = await h.complete(h.call())
    later = time.time() + 5
    monkeypatch.setattr(time, "time", lambda: later)
    again = await h.complete(h.call())
    assert again["created"] == first["created"]

