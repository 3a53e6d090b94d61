"""Idempotency keys end to end: the official openai client (``extra_headers={"Idempotency-Key": ...}``) against
a real uvicorn unimodel in front of the scripted upstream, with keys in memory and in a real Redis; the
upstream's received requests are counted."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ANSWER, REASONING
from tests.support.live_server import LiveServer
from tests.support.scripted_upstream import Script, ScriptedUpstream
from unimodel.config import Settings
from unimodel.compose import build_engine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    scripts = {"plain": Script(mode="raw", reasoning=REASONING, content=ANSWER),
               "slow": Script(mode="raw", content=ANSWER, delay_s=1.0),
               "long": Script(mode="raw", content="tok " * 100, frame_delay_s=0.02)}
    with ScriptedUpstream(scripts) as server:
        yield server


def _gateway(upstream: ScriptedUpstream, **settings: Any) -> LiveServer:
    s = Settings(engine="upstream", upstream=upstream.base_url, upstream_connect_timeout_s=1.0, **settings)
    return LiveServer(s, build_engine(s))


@pytest.fixture(scope="module", params=["memory", "redis"])
def gateway(request: pytest.FixtureRequest, upstream: ScriptedUpstream) -> Iterator[LiveServer]:
    extra: dict[str, Any] = {}
    if request.param == "redis":
        extra = {"redis": request.getfixturevalue("redis_server").url,
                 "redis_prefix": f"it{uuid.uuid4().hex[:8]}:"}
    with _gateway(upstream, **extra) as server:
        yield server


def _client(gateway: LiveServer, retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key="unused", max_retries=retries, timeout=20)


def _ask(tag: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is 2+2? ({tag})"}]


def _upstream_calls(upstream: ScriptedUpstream, tag: str) -> int:
    return sum(1 for body in upstream.requests if tag in str(body.get("messages")))


def test_a_repeat_is_replayed_without_an_upstream_call(gateway: LiveServer, upstream: ScriptedUpstream) -> None:
    tag, key = uuid.uuid4().hex, {"Idempotency-Key": uuid.uuid4().hex}
    client = _client(gateway)
    first = client.chat.completions.with_raw_response.create(model="plain", messages=_ask(tag),
                                                               extra_headers=key)
    again = client.chat.completions.with_raw_response.create(model="plain", messages=_ask(tag),
                                                               extra_headers=key)
    assert _upstream_calls(upstream, tag) == 1
    assert "idempotent-replayed" not in first.headers and again.headers["idempotent-replayed"] == "true"
    one, two = first.parse(), again.parse()
    assert two.id == one.id and two.created == one.created and two.choices[0].message.content == ANSWER
    assert two.model_dump() == one.model_dump()


def test_a_streamed_repeat_is_restreamed(gateway: LiveServer, upstream: ScriptedUpstream) -> None:
    tag, key = uuid.uuid4().hex, {"Idempotency-Key": uuid.uuid4().hex}
    client = _client(gateway)

    def chunks() -> list[dict[str, Any]]:
        stream = client.chat.completions.create(model="plain", messages=_ask(tag), stream=True,
                                                stream_options={"include_usage": True}, extra_headers=key)
        return [c.model_dump() for c in stream]

    first, again = chunks(), chunks()
    assert _upstream_calls(upstream, tag) == 1
    assert again == first and len(first) > 5 and len({c["id"] for c in again}) == 1
    assert "".join(c["choices"][0]["delta"]["content"] or "" for c in again if c["choices"]) == ANSWER


def test_the_same_key_with_another_body_is_a_409(gateway: LiveServer, upstream: ScriptedUpstream) -> None:
    tag, key = uuid.uuid4().hex, {"Idempotency-Key": uuid.uuid4().hex}
    client = _client(gateway)
    client.chat.completions.create(model="plain", messages=_ask(tag), extra_headers=key)
    with pytest.raises(openai.ConflictError) as err:
        client.chat.completions.create(model="plain", messages=_ask(tag + "!"), extra_headers=key)
    assert err.value.status_code == 409 and err.value.code == "idempotency_key_reused"
    assert _upstream_calls(upstream, tag) == 1


def test_four_concurrent_duplicates_make_one_upstream_call(gateway: LiveServer,
                                                           upstream: ScriptedUpstream) -> None:
    tag, key = uuid.uuid4().hex, {"Idempotency-Key": uuid.uuid4().hex}
    client = _client(gateway)

    def ask(_: int) -> Any:
        return client.chat.completions.with_raw_response.create(model="slow", messages=_ask(tag),
                                                                 extra_headers=key)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, range(4)))
    assert _upstream_calls(upstream, tag) == 1
    assert len({a.parse().id for a in answers}) == 1
    assert sorted(a.headers.get("idempotent-replayed", "no") for a in answers) == ["no", "true", "true", "true"]


def test_a_client_leaving_a_stream_releases_the_key(gateway: LiveServer, upstream: ScriptedUpstream) -> None:
    tag, key = uuid.uuid4().hex, {"Idempotency-Key": uuid.uuid4().hex}
    body = {"model": "long", "messages": _ask(tag), "stream": True}
    with httpx.stream("POST", gateway.base_url + "/chat/completions", json=body, headers=key, timeout=20) as resp:
        lines = resp.iter_lines()
        assert next(lines).startswith("data: ") and next(lines) == ""
    time.sleep(0.2)
    again = httpx.post(gateway.base_url + "/chat/completions", json=body, headers=key, timeout=10)
    assert again.status_code == 200 and "idempotent-replayed" not in again.headers
    assert _upstream_calls(upstream, tag) == 2


def test_a_malformed_key_is_a_400(gateway: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        _client(gateway).chat.completions.create(model="plain", messages=_ask("x"),
                                                 extra_headers={"Idempotency-Key": "k" * 256})
    assert "Idempotency-Key" in err.value.message


def test_ready_reports_the_store(gateway: LiveServer) -> None:
    body = httpx.get(gateway.base_url.removesuffix("/v1") + "/ready").json()
    assert body["idempotency"]["store"] in ("memory", "redis") and body["idempotency"]["available"] is True


def test_in_conflict_mode_the_openai_client_retries_after_the_409_and_is_served(
        upstream: ScriptedUpstream) -> None:
    tag, key = uuid.uuid4().hex, {"Idempotency-Key": uuid.uuid4().hex}
    with _gateway(upstream, idempotency_in_flight="conflict") as gateway:
        impatient, patient = _client(gateway), _client(gateway, retries=4)
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(impatient.chat.completions.create, model="slow", messages=_ask(tag),
                                extra_headers=key)
            time.sleep(0.3)  # the first request has claimed its key and waits on the slow upstream (1 s)
            with pytest.raises(openai.ConflictError) as conflict:
                impatient.chat.completions.create(model="slow", messages=_ask(tag), extra_headers=key)
            second = pool.submit(patient.chat.completions.with_raw_response.create, model="slow",
                                 messages=_ask(tag), extra_headers=key)
            one, two = first.result(timeout=30), second.result(timeout=30)
    assert conflict.value.code == "idempotency_key_in_use" and conflict.value.response.headers["retry-after"] == "1"
    assert two.headers["idempotent-replayed"] == "true" and two.parse().id == one.id
    assert _upstream_calls(upstream, tag) == 1
