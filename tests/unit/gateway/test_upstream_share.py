"""A key's share of the upstream pool: counted from ``enter`` to ``exit``, refused past it (429), given back once;
and where ``compose.py`` puts the stage."""

from __future__ import annotations

import asyncio

import pytest

from unimodel.compose import compose
from unimodel.config import Settings
from unimodel.engines.base import GenerationRequest
from unimodel.errors import UpstreamShareError
from unimodel.gateway.upstream_share import UpstreamShareStage, per_key_share
from unimodel.service.context import RequestContext
from unimodel.service.pipeline import Call


def call(key: str) -> Call:
    async def body() -> bytes:
        return b""

    ctx = RequestContext("r")
    ctx.key_name = key
    return Call(ctx, {}, body)


def test_a_key_holds_at_most_its_share_and_gives_it_back_once() -> None:
    async def go() -> None:
        stage = UpstreamShareStage(per_key=2)
        a1, a2, a3, b1 = call("a"), call("a"), call("a"), call("b")
        await stage.enter(a1)
        await stage.enter(a2)
        with pytest.raises(UpstreamShareError) as refused:
            await stage.enter(a3)
        assert refused.value.status_code == 429 and refused.value.code == "upstream_share_exceeded"
        assert refused.value.headers() == {"Retry-After": "1"}
        await stage.enter(b1)  # another key is not counted against it
        await stage.exit(a1, None)
        await stage.exit(a1, None)  # a second exit gives nothing back twice
        assert stage.held("a") == 1
        await stage.enter(a3)
        for c in (a2, a3, b1):
            await stage.exit(c, None)
        assert stage.held("a") == stage.held("b") == 0

    asyncio.run(go())


def test_a_request_with_n_choices_holds_n_connections_at_most_the_share() -> None:
    async def go() -> None:
        stage = UpstreamShareStage(per_key=4)
        three, one, eight = call("a"), call("a"), call("a")
        three.engine_request = GenerationRequest(completion_id="c", served_model="m", messages=[], n=3)
        eight.engine_request = GenerationRequest(completion_id="c", served_model="m", messages=[], n=8)
        await stage.enter(three)
        assert stage.held("a") == 3
        await stage.enter(one)
        with pytest.raises(UpstreamShareError):
            await stage.enter(eight)
        await stage.exit(three, None)
        await stage.exit(one, None)
        await stage.enter(eight)  # more choices than the share: the whole share, never refused for ever
        assert stage.held("a") == 4
        await stage.exit(eight, None)
        assert stage.held("a") == 0

    asyncio.run(go())


@pytest.mark.parametrize(("pool", "share", "per_key"), [(4, 0.5, 2), (256, 0.5, 128), (3, 0.5, 1), (1, 0.1, 1),
                                                        (10, 0.25, 2)])
def test_the_share_rounds_down_to_at_least_one(pool: int, share: float, per_key: int) -> None:
    assert per_key_share(pool, share) == per_key


KEYS = ["sk-share-one-0123456789", "sk-share-two-0123456789"]


@pytest.mark.parametrize(("settings", "present"), [
    ({"api_keys": KEYS}, True),
    ({"api_keys": KEYS[:1]}, False),  # one key: no other key to keep room for
    ({}, False),  # no keys: every caller is the same anonymous one
    ({"api_keys": KEYS, "upstream_key_share": 1.0}, False),
])
def test_the_stage_stands_just_before_choices_and_resilience(settings: dict[str, object], present: bool) -> None:
    s = Settings(engine="upstream", upstream="http://127.0.0.1:9/v1", upstream_max_connections=8, **settings)
    names = [stage.name for stage in compose(s).stages]
    assert ("upstream_share" in names) is present
    if present:
        assert names[-3:] == ["upstream_share", "choices", "resilience"]
        [stage] = [st for st in compose(s).stages if isinstance(st, UpstreamShareStage)]
        assert stage.per_key == 4
