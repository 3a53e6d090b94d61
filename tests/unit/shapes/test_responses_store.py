"""Stored responses (``shapes/responses/store*.py``): one contract, run on every backend — memory, SQLite (a tmp
file), a real PostgreSQL and a real Redis — with a clock the tests move (no sleeps): put/get/update/delete, one key
never sees another's, expiry, the size bound, and a backend that is down is a clear 503, never a lost write."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Optional

import pytest
from sqlalchemy import create_engine, inspect

from tests.support.live_server import free_port
from tests.support.redis_server import RedisServer
from unimodel.errors import InvalidRequestError, ResponseStoreUnavailableError, StoredResponseTooLargeError
from unimodel.shapes.responses.store import (
    DAY_S,
    MemoryResponseStore,
    ResponseStore,
    Status,
    StoredResponse,
)
from unimodel.shapes.responses.store_redis import RedisResponseStore
from unimodel.shapes.responses.store_sql import MIGRATIONS, TABLE, SqlResponseStore
from unimodel.telemetry.store import LogStore, database_url

T0 = 1_780_000_000.0
RETENTION_S = 30 * DAY_S


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


StoreFactory = Callable[..., Awaitable[ResponseStore]]


@pytest.fixture(params=["memory", "sqlite", "postgresql", "redis"])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Makes started stores of one backend (a fresh database or key prefix), each on the clock it is given."""
    made: list[ResponseStore] = []
    kind = request.param
    url: Optional[str] = None
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'requests.db'}"
    elif kind == "postgresql":
        url = database_url(request.getfixturevalue("postgres_server").create_database(), tmp_path)
    elif kind == "redis":
        url = request.getfixturevalue("redis_server").url
    prefix = f"t{uuid.uuid4().hex[:12]}:"

    async def make(clock: Clock, **kw: Any) -> ResponseStore:
        kw.setdefault("retention_s", RETENTION_S)
        store: ResponseStore
        if kind == "memory":
            store = MemoryResponseStore(clock=clock, **kw)
        elif kind == "redis":
            assert url is not None
            store = RedisResponseStore(url, prefix, clock=clock, **kw)
        else:
            assert url is not None
            store = SqlResponseStore(url, clock=clock, **kw)
        await store.start()
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


def response(rid: str = "resp_1", status: str = "completed", text: str = "Paris.") -> dict[str, Any]:
    return {"id": rid, "object": "response", "created_at": int(T0), "status": status, "model": "m",
            "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": text, "annotations": []}]}]}


ITEMS: list[Any] = [{"role": "user", "content": [{"type": "input_text", "text": "Capital of France? é 🎉"}]}]


async def test_a_stored_response_reads_back_whole(make_store: StoreFactory) -> None:
    clock = Clock()
    store = await make_store(clock)
    record = store.record("team-a", response(), ITEMS)
    assert (record.response_id, record.owner, record.status) == ("resp_1", "team-a", "completed")
    assert (record.created_at, record.expires_at) == (T0, T0 + RETENTION_S)
    await store.put("team-a", record)
    got = await store.get("team-a", "resp_1")
    assert got == record and got.response == response() and got.input_items == ITEMS
    got.response["status"] = "changed"  # a read is a copy: changing it stores nothing
    got.input_items.append("x")
    assert await store.get("team-a", "resp_1") == record
    # what previous_response_id continues: the input items, then the response's output items
    assert record.context_items() == [*ITEMS, *response()["output"]]
    # storing the same id again replaces it
    await store.put("team-a", store.record("team-a", response(text="Lyon."), [*ITEMS, *ITEMS]))
    again = await store.get("team-a", "resp_1")
    assert again is not None and again.response["output"][0]["content"][0]["text"] == "Lyon."
    assert again.input_items == [*ITEMS, *ITEMS]


async def test_unknown_and_malformed_ids_are_not_found(make_store: StoreFactory) -> None:
    store = await make_store(Clock())
    await store.put("team-a", store.record("team-a", response(), ITEMS))
    for rid in ("resp_2", "", "resp_1:team-a", "../resp_1", "r" * 129, "resp_1\x00"):
        assert await store.get("team-a", rid) is None
        assert await store.delete("team-a", rid) is False
        assert await store.update("team-a", rid, status="cancelled") is False
    with pytest.raises(ValueError):
        await store.put("team-a", store.record("team-a", response(rid="bad:id"), ITEMS))
    with pytest.raises(ValueError):  # a record is put by its own owner
        await store.put("team-b", store.record("team-a", response(), ITEMS))


async def check_owner_isolation(store: ResponseStore) -> None:
    """One key's response is invisible to every other key: get, update and delete by another find nothing and
    change nothing, and another key's response under the same id is a separate one."""
    await store.put("team-a", store.record("team-a", response(), ITEMS))
    assert await store.get("team-b", "resp_1") is None
    assert await store.update("team-b", "resp_1", status="cancelled") is False
    assert await store.delete("team-b", "resp_1") is False
    mine = await store.get("team-a", "resp_1")
    assert mine is not None and mine.status == "completed"
    await store.put("team-b", store.record("team-b", response(text="theirs"), []))
    mine = await store.get("team-a", "resp_1")
    assert mine is not None and mine.response["output"][0]["content"][0]["text"] == "Paris." and mine.input_items
    assert await store.delete("team-b", "resp_1") is True
    assert await store.get("team-a", "resp_1") is not None


async def test_a_response_is_invisible_to_every_other_key(make_store: StoreFactory) -> None:
    await check_owner_isolation(await make_store(Clock()))


class OwnerBlindStore(MemoryResponseStore):
    """A store that forgets the owner (everything filed under one name): what the isolation check must catch."""

    async def _put(self, record: StoredResponse, encoded: Any) -> None:
        await super()._put(StoredResponse(record.response_id, "all", record.created_at, record.expires_at,
                                          record.status, record.response, record.input_items), encoded)

    async def _get(self, owner: str, response_id: str, now: float) -> Optional[StoredResponse]:
        return await super()._get("all", response_id, now)

    async def _update(self, owner: str, response_id: str, *args: Any) -> bool:
        return await super()._update("all", response_id, *args)

    async def _delete(self, owner: str, response_id: str, now: float) -> bool:
        return await super()._delete("all", response_id, now)


async def test_the_isolation_check_fails_on_a_store_that_ignores_the_owner() -> None:
    with pytest.raises(AssertionError):
        await check_owner_isolation(OwnerBlindStore(clock=Clock()))


async def test_update_moves_a_background_response_on(make_store: StoreFactory) -> None:
    clock = Clock()
    store = await make_store(clock)
    await store.put("team-a", store.record("team-a", response(status="queued", text=""), ITEMS))
    queued = await store.get("team-a", "resp_1")
    assert queued is not None and queued.status == "queued"
    running: set[Status] = {"queued", "in_progress"}
    assert await store.update("team-a", "resp_1", status="in_progress", expect=running) is True
    clock.now += 60
    done = response(status="completed")
    assert await store.update("team-a", "resp_1", status="completed", response=done, expect=running) is True
    # a cancel that comes after the end changes nothing (and says so)
    assert await store.update("team-a", "resp_1", status="cancelled", expect=running) is False
    got = await store.get("team-a", "resp_1")
    assert got is not None and got.status == "completed" and got.response == done
    assert got.input_items == ITEMS and got.expires_at == queued.expires_at  # kept from when it was stored
    assert await store.update("team-a", "resp_1", status="failed", expect=()) is False
    with pytest.raises(ValueError):
        await store.update("team-a", "resp_1", status="done")  # type: ignore[arg-type]


async def test_delete(make_store: StoreFactory) -> None:
    store = await make_store(Clock())
    await store.put("team-a", store.record("team-a", response(), ITEMS))
    assert await store.delete("team-a", "resp_1") is True
    assert await store.get("team-a", "resp_1") is None
    assert await store.delete("team-a", "resp_1") is False
    assert await store.update("team-a", "resp_1", status="cancelled") is False


async def test_an_expired_response_is_never_returned(make_store: StoreFactory) -> None:
    clock = Clock()
    store = await make_store(clock, retention_s=3600)
    await store.put("team-a", store.record("team-a", response(), ITEMS))
    await store.put("team-a", store.record("team-a", response(rid="resp_2"), ITEMS))
    clock.now += 3599
    assert await store.get("team-a", "resp_1") is not None
    clock.now += 1
    assert await store.get("team-a", "resp_1") is None
    assert await store.update("team-a", "resp_1", status="cancelled") is False
    assert await store.delete("team-a", "resp_1") is False
    assert await store.get("team-a", "resp_2") is None
    swept = await store.sweep()
    assert swept == (0 if store.kind == "redis" else 2)  # Redis drops them itself (the key's TTL)
    await store.put("team-a", store.record("team-a", response(rid="resp_3"), ITEMS))  # made now: a new hour
    clock.now += 3599
    assert await store.get("team-a", "resp_3") is not None
    assert await store.sweep() == 0


async def test_the_size_of_a_record_is_bounded(make_store: StoreFactory) -> None:
    store = await make_store(Clock(), max_bytes=4096)
    body = response(text="x" * 2000)
    items = [{"role": "user", "content": "y" * 1500}]
    await store.put("team-a", store.record("team-a", body, items))  # about 3.8 KB: fits
    with pytest.raises(StoredResponseTooLargeError) as refused:
        await store.put("team-a", store.record("team-a", response(rid="resp_2"), [*items, *items, *items]))
    assert isinstance(refused.value, InvalidRequestError) and refused.value.status_code == 400
    assert "more than this server stores (4096)" in refused.value.message
    assert await store.get("team-a", "resp_2") is None  # nothing written
    # an update whose response would make the record too large changes nothing either
    with pytest.raises(StoredResponseTooLargeError):
        await store.update("team-a", "resp_1", status="completed", response=response(text="z" * 3000))
    got = await store.get("team-a", "resp_1")
    assert got is not None and got.response == body


async def test_the_memory_store_drops_its_oldest_past_its_bounds() -> None:
    clock = Clock()
    store = MemoryResponseStore(clock=clock, max_records=3)
    for i in range(5):
        clock.now += 1
        await store.put("k", store.record("k", response(rid=f"resp_{i}"), ITEMS))
    assert len(store) == 3 and store.evicted == 2
    assert [await store.get("k", f"resp_{i}") is not None for i in range(5)] == [False, False, True, True, True]
    small = MemoryResponseStore(clock=clock, max_bytes=2048, max_total_bytes=2048)
    for i in range(4):
        await small.put("k", small.record("k", response(rid=f"resp_{i}", text="x" * 700), []))
    assert len(small) == 2 and small._bytes <= 2048  # (each record ~1 KB)
    # expired records go on the next write, before anything live is dropped
    clock.now += RETENTION_S
    await store.put("k", store.record("k", response(rid="resp_9"), ITEMS))
    assert len(store) == 1 and store.evicted == 2


async def test_the_sql_store_has_its_own_table_in_the_request_logs_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'requests.db'}"
    log_store = LogStore(url)
    log_store.migrate()  # the request log's own tables first, as a server that has logged requests
    store = SqlResponseStore(url, clock=Clock())
    await store.start()
    try:
        await store.put("k", store.record("k", response(), ITEMS))
        engine = create_engine(url)
        try:
            tables = inspect(engine)
            assert {"requests", TABLE, "_migrations"} <= set(tables.get_table_names())
            indexed = {tuple(ix["column_names"]) for ix in tables.get_indexes(TABLE)}
            assert ("expires_at",) in indexed
        finally:
            engine.dispose()
        assert [m.name for m in MIGRATIONS][0] in log_store.applied_migrations()
        assert log_store.count() == 0  # the request log's table is untouched
    finally:
        await store.aclose()
        log_store.dispose()


async def test_a_store_that_never_stores_makes_no_database(tmp_path: Path) -> None:
    store = SqlResponseStore(f"sqlite:///{tmp_path / 'data' / 'requests.db'}", clock=Clock())
    await store.start()
    await store.aclose()
    assert not (tmp_path / "data").exists()


# ---- a backend that is down ------------------------------------------------------------------------------------

async def _assert_unavailable(store: ResponseStore) -> None:
    with pytest.raises(ResponseStoreUnavailableError) as down:
        await store.put("k", store.record("k", response(), ITEMS))
    assert down.value.status_code == 503 and down.value.code == "store_unavailable"
    assert down.value.retry_after is not None
    for call in (store.get("k", "resp_1"), store.delete("k", "resp_1"),
                 store.update("k", "resp_1", status="cancelled")):
        with pytest.raises(ResponseStoreUnavailableError):
            await call


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "redis"])
async def test_a_backend_that_cannot_be_reached_is_a_clear_503(kind: str, tmp_path: Path) -> None:
    store: ResponseStore
    if kind == "sqlite":
        (tmp_path / "requests.db").mkdir()  # a directory where the database file would be
        store = SqlResponseStore(f"sqlite:///{tmp_path / 'requests.db'}", clock=Clock())
    elif kind == "postgresql":  # nothing listens there
        store = SqlResponseStore(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x", clock=Clock(),
                                 connect_timeout_s=1)
    else:
        store = RedisResponseStore(f"redis://127.0.0.1:{free_port()}/0", "t:", clock=Clock(), timeout_s=1)
    await store.start()  # a backend that is down does not stop the server from starting
    try:
        await _assert_unavailable(store)
    finally:
        await store.aclose()


async def test_postgresql_down_then_back(postgres_server: Any) -> None:
    url = postgres_server.create_database()
    store = SqlResponseStore(database_url(url, Path(".")), clock=Clock(), connect_timeout_s=1)
    await store.start()
    try:
        await store.put("k", store.record("k", response(), ITEMS))
        postgres_server.stop()
        try:
            await _assert_unavailable(store)
        finally:
            postgres_server.start()
        await store.put("k", store.record("k", response(rid="resp_2"), ITEMS))
        assert await store.get("k", "resp_1") is not None and await store.get("k", "resp_2") is not None
    finally:
        await store.aclose()


async def test_redis_down_then_back() -> None:
    port = free_port()
    store = RedisResponseStore(f"redis://127.0.0.1:{port}/0", "t:", clock=Clock(), timeout_s=1)
    await store.start()
    try:
        await _assert_unavailable(store)
        with RedisServer(port):
            await store.put("k", store.record("k", response(), ITEMS))
            got = await store.get("k", "resp_1")
            assert got is not None and got.input_items == ITEMS
            ttl_ms = await store.client.pttl("t:resp:resp_1:k")
            assert 0 < ttl_ms <= RETENTION_S * 1000  # Redis expires it on its own
    finally:
        await store.aclose()
