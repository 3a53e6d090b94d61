"""The pool engine over simulated vLLM replicas (``tests/support/sim_vllm.py``, real HTTP on 127.0.0.1): it
spreads requests, keeps a conversation on the replica that holds its prefix, fails over when a replica dies
before the first token, fails only the stream a replica was serving when it dies mid-answer, counts stale
metrics as saturated, honours a drain, follows discovery, and queues by priority when every replica is full."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace

import aiohttp
import pytest

from unimodel.engines.base import GenerationRequest
from unimodel.engines.factory import pool_engine
from unimodel.engines.options import PoolOptions, UpstreamOptions
from unimodel.engines.pool.discovery import Discovery, StaticDiscovery
from unimodel.engines.pool.engine import PoolEngine
from unimodel.errors import UnimodelError
from unimodel.protocol.events import ContentDelta
from unimodel.protocol.openai import Message
from tests.support.sim_vllm import SimVllm
from tests.support.sim_vllm_engine import SimConfig

pytestmark = pytest.mark.timeout(60)

OPTIONS = PoolOptions(scrape_interval_s=0.1, discovery_interval_s=0.1, queue_timeout_s=20, breaker_min_callers=1)
UPSTREAM = UpstreamOptions(connect_timeout_s=2.0, read_timeout_s=20.0, parse_mode="upstream")


class ListedDiscovery(Discovery):
    """A discovery whose answer the test changes (DNS and Kubernetes lookups are tested against real servers
    in test_discovery.py; here only what the pool does with a changing list matters)."""

    dynamic = True

    def __init__(self, urls: Sequence[str]) -> None:
        self.spec = "listed"
        self.urls = list(urls)

    async def resolve(self, session: aiohttp.ClientSession) -> list[str]:
        return list(self.urls)


@asynccontextmanager
async def replicas(n: int, **config: object) -> AsyncIterator[list[SimVllm]]:
    async with AsyncExitStack() as stack:
        sims = [await stack.enter_async_context(SimVllm(SimConfig(**config), default_max_tokens=8))  # type: ignore[arg-type]
                for _ in range(n)]
        yield sims


@asynccontextmanager
async def pool(discoveries: Sequence[Discovery], options: PoolOptions = OPTIONS) -> AsyncIterator[PoolEngine]:
    engine = pool_engine(options, UPSTREAM, discoveries, served_model_name="sim-model")
    assert isinstance(engine, PoolEngine)
    await engine.start()
    try:
        await until(engine.is_ready)
        yield engine
    finally:
        await engine.aclose()


async def until(check, timeout_s: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout_s):
        while not check():
            await asyncio.sleep(0.02)


def request(*turns: str, i: int = 0, max_tokens: int = 8, **extra: object) -> GenerationRequest:
    messages = [Message(role="user" if k % 2 == 0 else "assistant", content=t) for k, t in enumerate(turns)]
    return GenerationRequest(completion_id=f"chatcmpl-{i}", served_model="sim-model", messages=messages,
                             max_tokens=max_tokens, **extra)  # type: ignore[arg-type]


async def answer(engine: PoolEngine, req: GenerationRequest) -> str:
    text = []
    async for event in engine.generate(req):
        if isinstance(event, ContentDelta):
            text.append(event.text)
        assert not isinstance(event, Exception)
    return "".join(text)


def served(engine: PoolEngine) -> dict[str, int]:
    return {r.name: r.served for r in engine.replicas.values()}


async def test_spreads_load_and_keeps_a_conversation_where_its_prefix_is() -> None:
    async with replicas(3) as sims, pool([StaticDiscovery(s.base_url) for s in sims]) as engine:
        await asyncio.gather(*(answer(engine, request(f"unrelated prompt number {i} " * 40, i=i))
                               for i in range(30)))
        counts = served(engine)
        assert len(counts) == 3 and all(c > 0 for c in counts.values()), counts
        before = dict(served(engine))
        doc = "a long shared document about the pool " * 60
        history = [doc]
        for turn in range(5):
            await answer(engine, request(*history, i=100 + turn))
            history += [f"answer {turn}", f"question {turn + 1}"]
        grew = [name for name, c in served(engine).items() if c != before[name]]
        assert len(grew) == 1, served(engine)  # every turn went to the replica that served the first
        assert engine.choices["prefix"] >= 4


async def test_a_dead_replica_is_skipped_before_the_first_token() -> None:
    async with replicas(2) as sims, pool([StaticDiscovery(s.base_url) for s in sims]) as engine:
        sims[0].kill()
        await until(lambda: sims[0].dead.is_set())
        answers = await asyncio.gather(*(answer(engine, request(f"q{i} " * 30, i=i)) for i in range(10)))
        assert all(answers)  # every request answered, by the live one
        dead = next(r for r in engine.replicas.values() if r.url == sims[0].base_url)
        assert engine.choices["failover"] == dead.served  # each one sent there went on to the live one
        await until(lambda: engine.pool_status()["replicas"][dead.name]["metrics"] == "stale")  # type: ignore[index]
        before = dead.served
        await asyncio.gather(*(answer(engine, request(f"r{i} " * 30, i=i)) for i in range(10)))
        assert dead.served == before  # its metrics went stale: nothing more is sent there


async def test_a_replica_that_dies_mid_stream_fails_only_its_streams() -> None:
    async with replicas(2, decode_ms=30) as sims, pool([StaticDiscovery(s.base_url) for s in sims]) as engine:
        reqs = [request(f"long answer {i} " * 20, i=i, max_tokens=40) for i in range(6)]
        tasks = [asyncio.create_task(answer(engine, r)) for r in reqs]
        await until(lambda: all(r.inflight == 3 for r in engine.replicas.values()) or
                    sum(r.inflight for r in engine.replicas.values()) == 6)
        victim = next(r for r in engine.replicas.values() if r.inflight)
        sim = next(s for s in sims if s.base_url == victim.url)
        await asyncio.sleep(0.1)  # their first tokens are out
        lost = victim.inflight
        sim.kill()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        assert len(failed) == lost and all(isinstance(e, UnimodelError) for e in failed)
        assert all(isinstance(r, str) and r for r in results if not isinstance(r, BaseException))


async def test_stale_metrics_count_as_saturated() -> None:
    async with replicas(2) as sims, pool([StaticDiscovery(s.base_url) for s in sims]) as engine:
        sims[0].set_faults(metrics="hang")
        stale = next(r for r in engine.replicas.values() if r.url == sims[0].base_url)
        await until(lambda: engine.pool_status()["replicas"][stale.name]["metrics"] == "stale")  # type: ignore[index]
        before = stale.served
        await asyncio.gather(*(answer(engine, request(f"p{i} " * 30, i=i)) for i in range(12)))
        assert stale.served == before  # while the other had room, nothing went to the one we cannot see
        assert engine.saturation() >= 0.5


async def test_a_drained_replica_takes_nothing_new_and_finishes_what_it_has() -> None:
    async with replicas(2, decode_ms=20) as sims, pool([StaticDiscovery(s.base_url) for s in sims]) as engine:
        name = next(iter(engine.replicas.values())).name
        running = asyncio.create_task(answer(engine, request("x " * 10, i=1, max_tokens=30)))
        await until(lambda: sum(r.inflight for r in engine.replicas.values()) == 1)
        busy = next(r for r in engine.replicas.values() if r.inflight)
        engine.drain(busy.name)
        assert (await asyncio.wait_for(running, 20)).count(" ") >= 29  # the one in flight finished whole
        before = busy.served
        await asyncio.gather(*(answer(engine, request(f"d{i} " * 30, i=i)) for i in range(8)))
        assert busy.served == before and engine.pool_status()["replicas"][busy.name]["state"] == "draining"  # type: ignore[index]
        engine.drain(busy.name, drained=False)
        with pytest.raises(KeyError):
            engine.drain("nobody:1")
        assert name in engine.pool_status()["replicas"]  # type: ignore[operator]


async def test_replicas_come_and_go_with_discovery() -> None:
    async with replicas(3) as sims:
        listed = ListedDiscovery([sims[0].base_url])
        async with pool([listed]) as engine:
            assert len(engine.replicas) == 1
            listed.urls = [s.base_url for s in sims]
            await until(lambda: sum(r.usable() for r in engine.replicas.values()) == 3)
            listed.urls = [sims[2].base_url]
            await until(lambda: len(engine.replicas) == 1)
            await asyncio.gather(*(answer(engine, request(f"g{i}", i=i)) for i in range(4)))
            assert served(engine)[next(iter(engine.replicas.values())).name] == 4


async def test_a_saturated_pool_admits_interactive_before_batch() -> None:
    options = replace(OPTIONS, max_waiting=1, max_inflight=1)
    async with replicas(1, decode_ms=20, max_num_seqs=1) as sims, \
            pool([StaticDiscovery(s.base_url) for s in sims], options) as engine:
        first = asyncio.create_task(answer(engine, request("hold", i=0, max_tokens=20)))
        await until(lambda: next(iter(engine.replicas.values())).inflight == 1)
        done: list[str] = []

        async def ask(label: str, rank: int, tenant: str, i: int) -> None:
            await answer(engine, request(label, i=i, priority_rank=rank, tenant=tenant))
            done.append(label)

        batch = [asyncio.create_task(ask(f"batch{i}", 10, "heavy", 10 + i)) for i in range(3)]
        await until(lambda: engine.pool_status()["queue"]["waiting"] == 3)  # type: ignore[index]
        urgent = asyncio.create_task(ask("interactive", 0, "light", 99))
        await until(lambda: engine.pool_status()["queue"]["waiting"] == 4)  # type: ignore[index]
        await asyncio.wait_for(asyncio.gather(first, urgent, *batch), 30)
        assert done[0] == "interactive", done
        assert Counter(engine.choices)["queued"] == 4


async def test_a_replica_whose_metrics_are_guarded_is_judged_by_our_own_count() -> None:
    """An upstream that answers 401 on /metrics (a proxy guarding it) is not stale for ever: it takes requests."""
    from aiohttp import web

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "sim-model", "object": "model"}]})

    async def metrics(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": "no"}}, status=401)

    async def chat(request: web.Request) -> web.Response:
        return web.json_response({"id": "x", "object": "chat.completion", "model": "sim-model", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "guarded"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    app = web.Application()
    app.add_routes([web.get("/v1/models", models), web.get("/metrics", metrics),
                    web.post("/v1/chat/completions", chat)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with replicas(1) as sims, pool([StaticDiscovery(f"http://127.0.0.1:{port}/v1"),
                                              StaticDiscovery(sims[0].base_url)]) as engine:
            guarded = next(r for r in engine.replicas.values() if str(port) in r.url)
            await until(lambda: guarded.no_metrics)
            sims[0].set_faults(metrics="hang")  # the other one goes stale: only the guarded one has room
            other = next(r for r in engine.replicas.values() if r is not guarded)
            await until(lambda: engine.pool_status()["replicas"][other.name]["metrics"] == "stale")  # type: ignore[index]
            out = await answer(engine, request("hello", i=1, streamed=False))
            assert out == "guarded" and guarded.served == 1
    finally:
        await runner.cleanup()
