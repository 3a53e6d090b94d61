"""The Responses API's state through a live unimodel, with the official openai SDK: stored responses
(``previous_response_id``, ``responses.retrieve``/``delete``/``input_items.list``), one key never sees another's,
``background=True`` polled to its end or ``responses.cancel``-ed (the upstream's stream is then closed), the bound
on background runs, a response stored by one server read by a second on the same SQLite file (also one whose
background run the shutdown stopped), and the same on Redis. In front of the scripted upstream, whose slow
scripts (``frame_delay_s``) keep a background response running long enough to cancel."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.support.live_server import LiveServer
from tests.support.redis_server import RedisServer
from tests.support.scripted_upstream import Script, ScriptedUpstream
from unimodel.compose import build_engine
from unimodel.config import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

KEY_A, KEY_B = "sk-responses-state-a", "sk-responses-state-b"
SLOW = Script(mode="parsed", content="z" * 400, chunk_chars=1, frame_delay_s=0.05)  # ~20 s: cancelled first
QUICK = Script(mode="parsed", reasoning="Quick.", content="done in a moment", chunk_chars=4, frame_delay_s=0.02)


def echo(body: dict[str, Any]) -> Script:
    """Answers with how many messages it was sent and the last one's text: a chain shows in the answer."""
    last = body["messages"][-1]["content"]
    text = last if isinstance(last, str) else "".join(p.get("text", "") for p in last)
    return Script(mode="parsed", reasoning="Counting.", content=f"{len(body['messages'])} messages, last: {text}")


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream({"echo": Script(respond=echo), "slow": SLOW, "quick": QUICK}) as server:
        yield server


def settings_for(upstream: ScriptedUpstream, data_dir: Path, **kw: Any) -> Settings:
    return Settings(engine="upstream", upstream=upstream.base_url, upstream_connect_timeout_s=2.0,
                    api_keys=[KEY_A, KEY_B], data_dir=data_dir, metrics=False, **kw)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("responses-state")


@pytest.fixture(scope="module")
def server(upstream: ScriptedUpstream, data_dir: Path) -> Iterator[LiveServer]:
    settings = settings_for(upstream, data_dir, responses_max_background=2)
    with LiveServer(settings, build_engine(settings)) as live:
        yield live


def client_for(server: LiveServer, key: str = KEY_A) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=30)


@pytest.fixture
def alice(server: LiveServer) -> Iterator[openai.OpenAI]:
    with client_for(server) as client:
        yield client


@pytest.fixture
def bob(server: LiveServer) -> Iterator[openai.OpenAI]:
    with client_for(server, KEY_B) as client:
        yield client


def wait_done(client: openai.OpenAI, response_id: str, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.responses.retrieve(response_id)
        if response.status not in ("queued", "in_progress"):
            return response
        assert time.monotonic() < deadline, f"{response_id} still {response.status} after {timeout_s}s"
        time.sleep(0.1)


def wait_for(condition: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# ---- stored responses ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_previous_response_id_continues_the_stored_conversation(alice: openai.OpenAI,
                                                                upstream: ScriptedUpstream, stream: bool) -> None:
    first = alice.responses.create(model="echo", input="Hello", instructions="Be brief.")
    assert first.store is True and first.output_text == "2 messages, last: Hello"
    if stream:
        with alice.responses.stream(model="echo", input="And again?", previous_response_id=first.id) as events:
            second = events.get_final_response()
    else:
        second = alice.responses.create(model="echo", input="And again?", previous_response_id=first.id)
    # its conversation (the first turn's input, then its output: reasoning and message) before the new input
    assert second.output_text == "3 messages, last: And again?" and second.previous_response_id == first.id
    sent = upstream.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]  # instructions are not carried over
    assert sent[1]["content"] == first.output_text and "Counting." in str(sent[1])
    third = alice.responses.create(model="echo", input="Third", previous_response_id=second.id)
    assert third.output_text == "5 messages, last: Third"  # the whole chain, one read


def test_retrieve_input_items_and_delete(alice: openai.OpenAI) -> None:
    made = alice.responses.create(model="echo", input="Keep me", metadata={"k": "v"})
    got = alice.responses.retrieve(made.id)
    assert got.model_dump() == made.model_dump()
    items = alice.responses.input_items.list(made.id)
    assert [item.type for item in items.data] == ["message"]
    assert items.data[0].content[0].text == "Keep me"  # type: ignore[union-attr]
    assert alice.responses.delete(made.id) is None  # the SDK reads no body; the server sent {id, deleted: true}
    with pytest.raises(openai.NotFoundError) as info:
        alice.responses.retrieve(made.id)
    assert info.value.body["message"] == f"Response with id '{made.id}' not found."  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        alice.responses.create(model="echo", input="x", previous_response_id=made.id)
    assert bad.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert bad.value.body["message"] == f"Previous response with id '{made.id}' not found."  # type: ignore[index]


def test_the_delete_body_is_openais(server: LiveServer, alice: openai.OpenAI) -> None:
    made = alice.responses.create(model="echo", input="x")
    raw = alice.delete(f"/responses/{made.id}", cast_to=object)
    assert raw == {"id": made.id, "object": "response", "deleted": True}


def test_one_key_never_sees_anothers_responses(alice: openai.OpenAI, bob: openai.OpenAI) -> None:
    made = alice.responses.create(model="echo", input="Alice's secret")
    for attempt in (lambda: bob.responses.retrieve(made.id), lambda: bob.responses.delete(made.id),
                    lambda: bob.responses.cancel(made.id), lambda: bob.responses.input_items.list(made.id)):
        with pytest.raises(openai.NotFoundError):
            attempt()
    with pytest.raises(openai.BadRequestError):
        bob.responses.create(model="echo", input="x", previous_response_id=made.id)
    assert alice.responses.retrieve(made.id).id == made.id  # still there, for its owner


def test_the_stored_responses_api_needs_a_key(server: LiveServer) -> None:
    with client_for(server, "sk-wrong") as stranger, pytest.raises(openai.AuthenticationError):
        stranger.responses.retrieve("resp_" + "0" * 32)


def test_store_false_is_not_kept(alice: openai.OpenAI) -> None:
    made = alice.responses.create(model="echo", input="Forget me", store=False)
    assert made.store is False
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(made.id)


# ---- background ---------------------------------------------------------------------------------------------


def test_background_is_answered_at_once_and_polled_to_completion(alice: openai.OpenAI) -> None:
    started = alice.responses.create(model="quick", input="x", background=True, reasoning={"effort": "high"})
    assert started.status in ("queued", "in_progress") and started.background is True and started.output == []
    done = wait_done(alice, started.id)
    assert done.status == "completed" and done.output_text == "done in a moment" and done.background is True
    assert done.usage is not None and done.usage.output_tokens > 0
    with pytest.raises(openai.BadRequestError) as info:  # a finished one cannot be cancelled
        alice.responses.cancel(done.id)
    assert "'completed'" in info.value.message
    follow = alice.responses.create(model="echo", input="next", previous_response_id=done.id)
    assert follow.output_text == "3 messages, last: next"


def test_cancel_stops_the_engine_and_stores_cancelled(alice: openai.OpenAI, bob: openai.OpenAI,
                                                     upstream: ScriptedUpstream) -> None:
    started = alice.responses.create(model="slow", input="x", background=True)
    wait_for(lambda: upstream.calls("slow") >= 1)
    before = upstream.disconnects
    cancelled = alice.responses.cancel(started.id)
    assert cancelled.status == "cancelled" and cancelled.id == started.id
    assert alice.responses.retrieve(started.id).status == "cancelled"
    assert alice.responses.cancel(started.id).status == "cancelled"  # again: the same answer, as OpenAI's
    wait_for(lambda: upstream.disconnects > before)  # the upstream's stream was closed: its work stopped
    time.sleep(0.3)
    assert alice.responses.retrieve(started.id).status == "cancelled"  # the run's end did not overwrite it


def test_background_runs_are_bounded(alice: openai.OpenAI) -> None:
    running = [alice.responses.create(model="slow", input="x", background=True) for _ in range(2)]
    try:
        with pytest.raises(openai.RateLimitError) as info:
            alice.responses.create(model="slow", input="x", background=True)
        assert "background responses" in info.value.message
    finally:
        for response in running:
            alice.responses.cancel(response.id)
    quick = alice.responses.create(model="quick", input="x", background=True)  # room again
    assert wait_done(alice, quick.id).status == "completed"


@pytest.mark.parametrize(("fields", "param"), [({"store": False}, "background"), ({"stream": True}, "stream")])
def test_background_needs_store_and_no_stream(alice: openai.OpenAI, fields: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        alice.responses.create(model="echo", input="x", background=True, **fields)
    assert info.value.body["param"] == param  # type: ignore[index]


def test_a_background_request_is_refused_synchronously_by_the_pipeline(alice: openai.OpenAI,
                                                                        upstream: ScriptedUpstream) -> None:
    calls = upstream.calls("quick")
    with pytest.raises(openai.APIStatusError) as info:  # the route stage's refusal: its status, nothing run
        alice.responses.create(model="quick", input="x", background=True, extra_body={"route": "no-such-route"})
    assert 400 <= info.value.status_code < 500 and info.value.status_code != 429
    assert upstream.calls("quick") == calls


# ---- durability: a second server on the same database, and Redis ---------------------------------------------------


def test_a_stored_response_survives_to_a_second_server_on_the_same_sqlite_file(upstream: ScriptedUpstream,
                                                                               tmp_path: Path) -> None:
    settings = settings_for(upstream, tmp_path)
    with LiveServer(settings, build_engine(settings)) as first, client_for(first) as client:
        kept = client.responses.create(model="echo", input="Remember me")
        stopped = client.responses.create(model="slow", input="x", background=True)
        wait_for(lambda: upstream.calls("slow") >= 1)
    # the first server has shut down: its background run was stopped and stored as failed
    with LiveServer(settings, build_engine(settings)) as second, client_for(second) as client:
        assert client.responses.retrieve(kept.id).output_text == kept.output_text
        follow = client.responses.create(model="echo", input="Still there?", previous_response_id=kept.id)
        assert follow.output_text == "3 messages, last: Still there?"
        failed = client.responses.retrieve(stopped.id)
        assert failed.status == "failed" and failed.error is not None
        assert failed.error.code == "server_error" and "shut down" in failed.error.message


def test_the_redis_store_through_a_live_server(upstream: ScriptedUpstream, redis_server: RedisServer,
                                               tmp_path: Path) -> None:
    settings = settings_for(upstream, tmp_path, responses_store="redis", redis=redis_server.url,
                            redis_prefix="responses-test:")
    with LiveServer(settings, build_engine(settings)) as live, client_for(live) as client, \
            client_for(live, KEY_B) as other:
        first = client.responses.create(model="echo", input="Hello")
        second = client.responses.create(model="echo", input="Again", previous_response_id=first.id)
        assert second.output_text == "3 messages, last: Again"
        background = client.responses.create(model="quick", input="x", background=True)
        assert wait_done(client, background.id).status == "completed"
        with pytest.raises(openai.NotFoundError):
            other.responses.retrieve(first.id)
        client.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(first.id)


def test_a_store_that_is_down_is_a_503_on_a_whole_answer_and_logged_on_a_stream(upstream: ScriptedUpstream,
                                                                                 tmp_path: Path,
                                                                                 caplog: pytest.LogCaptureFixture
                                                                                 ) -> None:
    with RedisServer() as redis:
        settings = settings_for(upstream, tmp_path, responses_store="redis", redis=redis.url)
        with LiveServer(settings, build_engine(settings)) as live, client_for(live) as client:
            kept = client.responses.create(model="echo", input="Hello")
            redis.stop()
            with pytest.raises(openai.InternalServerError) as info:  # not stored, so not answered: retry it
                client.responses.create(model="echo", input="Hello")
            assert info.value.status_code == 503
            assert info.value.body["code"] == "store_unavailable"  # type: ignore[index]
            with pytest.raises(openai.InternalServerError) as read:  # a read that fails: 503 too
                client.responses.create(model="echo", input="x", previous_response_id=kept.id)
            assert read.value.status_code == 503
            with caplog.at_level("ERROR", logger="unimodel.responses"):
                with client.responses.stream(model="echo", input="Hello") as stream:
                    streamed = stream.get_final_response()  # the answer was owed: it came whole
            assert streamed.status == "completed"
            assert any(streamed.id in r.getMessage() and "not stored" in r.getMessage() for r in caplog.records)
