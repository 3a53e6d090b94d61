"""Priority classes end to end: a real uvicorn gateway with ``--pool-forward-priority`` in front of the scripted
upstream, the official openai client and the ``X-Unimodel-Priority`` header. The class's rank reaches the upstream
as vLLM's ``priority``; a class the key may not use (403) or that does not exist (400) is refused before the
upstream is called; the access log line names the class."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import openai
import pytest

from tests.support.live_server import LiveServer
from tests.support.scripted_upstream import Script, ScriptedUpstream
from unimodel.compose import build_engine
from unimodel.config import Settings
from unimodel.gateway.keyhash import hash_key, key_prefix, new_key
from unimodel.gateway.policy import KeyPolicy

MSG: list = [{"role": "user", "content": "Say hello."}]
FREE, NIGHTLY = new_key(), new_key()


def _key(name: str, secret: str, **policy: object) -> KeyPolicy:
    return KeyPolicy.model_validate({"name": name, "key_hash": hash_key(secret, n=2), "prefix": key_prefix(secret),
                                     **policy})


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream({"m": Script(content="Hello.")}) as up:
        yield up


@pytest.fixture(scope="module")
def gateway(upstream: ScriptedUpstream) -> Iterator[LiveServer]:
    settings = Settings.load(engine="upstream", upstream=upstream.base_url, upstream_connect_timeout_s=1.0,
                             pool_forward_priority=True, request_log=False,
                             keys=[_key("free", FREE),
                                   _key("nightly", NIGHTLY, priority_class="batch", priority_classes=["batch"])])
    with LiveServer(settings, build_engine(settings)) as server:
        yield server


def _client(server: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=20)


def _sent_priority(upstream: ScriptedUpstream, client: openai.OpenAI, **kw: object) -> object:
    before = len(upstream.requests)
    answer = client.chat.completions.create(model="m", messages=MSG, **kw)  # type: ignore[call-overload]
    assert answer.choices[0].message.content == "Hello."
    [sent] = upstream.requests[before:]
    return sent.get("priority")


def test_the_class_reaches_the_upstream_as_vllms_priority(gateway: LiveServer, upstream: ScriptedUpstream,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="unimodel.access")
    with _client(gateway, FREE) as free, _client(gateway, NIGHTLY) as nightly:
        assert _sent_priority(upstream, free, extra_headers={"X-Unimodel-Priority": "batch"}) == 10
        assert _sent_priority(upstream, free) == 0  # the default class, interactive
        assert _sent_priority(upstream, nightly) == 10  # the key's own class
        # a priority the key may not send (no range, no --allow-priority) is dropped: the class's rank goes
        assert _sent_priority(upstream, free, extra_body={"priority": -50}) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "unimodel.access"]
    assert any("key=free" in line and "priority=batch" in line for line in lines), lines


def test_a_class_the_key_may_not_use_or_that_does_not_exist_is_refused_before_the_upstream(
        gateway: LiveServer, upstream: ScriptedUpstream) -> None:
    before = len(upstream.requests)
    with _client(gateway, NIGHTLY) as nightly, _client(gateway, FREE) as free:
        with pytest.raises(openai.PermissionDeniedError, match="X-Unimodel-Priority") as denied:
            nightly.chat.completions.create(model="m", messages=MSG,  # type: ignore[call-overload]
                                            extra_headers={"X-Unimodel-Priority": "interactive"})
        assert denied.value.status_code == 403
        with pytest.raises(openai.BadRequestError, match="X-Unimodel-Priority") as bad:
            free.chat.completions.create(model="m", messages=MSG,  # type: ignore[call-overload]
                                         extra_headers={"X-Unimodel-Priority": "urgent"})
        assert bad.value.body["code"] == "priority_class_not_found"  # type: ignore[index]
    assert len(upstream.requests) == before  # neither reached the upstream
