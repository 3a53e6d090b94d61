"""Stored responses: what ``store: true`` keeps for the Responses API, per API key, for a retention.

A stored response is one :class:`StoredResponse`: the Response object as the client saw it (a JSON dict), the
whole conversation's input items up to it (what ``previous_response_id`` continues: the next turn's context is
:meth:`StoredResponse.context_items` followed by the new input, so a chain is one read, never a walk), its
status (a ``background`` response is stored ``queued`` and moved on with :meth:`ResponseStore.update`), and
when it was stored and expires (30 days by default, as OpenAI keeps them).

Every call names the owner, the caller's key name (``call.ctx.key_name``): a response belongs to the key that
made it, and is invisible to every other key (a get, update or delete by another key finds nothing, exactly as
for an id that never existed). An expired response is never returned; the backends drop them on their own
(Redis by TTL, memory on write, SQL by a periodic sweep).

Sizes are bounded: a record's JSON (response and input items) at most ``max_bytes``, else
:class:`~unimodel.errors.StoredResponseTooLargeError` (400) before anything is written; ids and owners are
short. A write that fails is never lost silently: every backend failure is
:class:`~unimodel.errors.ResponseStoreUnavailableError` (503), raised to the caller.

The backends: :class:`MemoryResponseStore` (here: bounded, for tests and a server without a database),
:class:`~unimodel.shapes.responses.store_sql.SqlResponseStore` (the request log's database: SQLite or
PostgreSQL) and :class:`~unimodel.shapes.responses.store_redis.RedisResponseStore`. They share this module's
checks and encoding, so they behave the same (``tests/unit/shapes/test_responses_store.py`` runs one suite over
all of them).
"""

from __future__ import annotations

import collections
import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, get_args

import orjson

from unimodel.errors import StoredResponseTooLargeError

log = logging.getLogger("unimodel.responses")

Status = Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]
STATUSES: frozenset[str] = frozenset(get_args(Status))
#: the statuses a response can still leave (a background response's: what ``cancel`` may stop)
RUNNING: frozenset[str] = frozenset({"queued", "in_progress"})

DAY_S = 86_400.0
DEFAULT_RETENTION_S = 30 * DAY_S  # OpenAI keeps stored responses 30 days
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
MAX_OWNER_CHARS = 128
#: a response id: ours are ``resp_`` and hex; anything else (a client's guess in GET /v1/responses/{id}) that
#: does not look like one is simply not found. No ``:``, so a Redis key ``…:{id}:{owner}`` is unambiguous
_RESPONSE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}\Z")

Clock = Callable[[], float]


@dataclass(frozen=True)
class StoredResponse:
    """One stored response. Times are Unix seconds; ``response`` and ``input_items`` are plain JSON values
    (each read gives fresh ones: changing them changes nothing stored)."""

    response_id: str
    owner: str
    created_at: float
    expires_at: float
    status: Status
    response: dict[str, Any] = field(repr=False)
    input_items: list[Any] = field(repr=False)

    def context_items(self) -> list[Any]:
        """The conversation up to and including this response, as input items: what a request with
        ``previous_response_id`` set to this one continues (its own ``input`` goes after these)."""
        output = self.response.get("output")
        return [*self.input_items, *(output if isinstance(output, list) else ())]


@dataclass(frozen=True)
class Encoded:
    """A record's JSON, as every backend stores it (encoded once, measured once)."""

    response: bytes
    input_items: bytes

    @property
    def size(self) -> int:
        return len(self.response) + len(self.input_items)


def valid_id(response_id: object) -> bool:
    return isinstance(response_id, str) and _RESPONSE_ID.match(response_id) is not None


def _check_owner(owner: object) -> str:
    if not isinstance(owner, str) or not owner or len(owner) > MAX_OWNER_CHARS:
        raise ValueError(f"a stored response's owner is a key name of 1 to {MAX_OWNER_CHARS} characters")
    return owner


def _check_status(status: object) -> Status:
    if status not in STATUSES:
        raise ValueError(f"a stored response's status is one of {', '.join(sorted(STATUSES))}, not {status!r}")
    return status  # type: ignore[return-value]


def dumps(value: Any, what: str) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError as exc:  # (orjson's JSONEncodeError is a TypeError)
        raise ValueError(f"the {what} of a stored response is not JSON: {exc}") from exc


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


class ResponseStore(ABC):
    """Stored responses, by owner and id; ``start``/``aclose`` follow the server's lifespan."""

    kind = "abstract"

    def __init__(self, *, retention_s: float = DEFAULT_RETENTION_S, max_bytes: int = DEFAULT_MAX_BYTES,
                 clock: Clock = time.time) -> None:
        if retention_s <= 0 or max_bytes < 1:
            raise ValueError("the retention and the largest record must be positive")
        self.retention_s = retention_s
        self.max_bytes = max_bytes
        self.clock = clock

    # ---- what callers use ----------------------------------------------------------------------------------

    def record(self, owner: str, response: dict[str, Any], input_items: list[Any], *,
               status: Optional[Status] = None) -> StoredResponse:
        """A record of ``response`` (its ``id``, its ``status`` unless ``status`` is given) made now, expiring
        after the retention: what :meth:`put` takes."""
        now = self.clock()
        return StoredResponse(response_id=str(response.get("id", "")), owner=owner, created_at=now,
                              expires_at=now + self.retention_s,
                              status=status or response.get("status") or "completed",
                              response=response, input_items=input_items)

    async def put(self, owner: str, record: StoredResponse) -> None:
        """Store ``record`` (replacing a record of the same id and owner). Raises
        :class:`~unimodel.errors.StoredResponseTooLargeError` past ``max_bytes`` (nothing written) and
        :class:`~unimodel.errors.ResponseStoreUnavailableError` when the backend fails."""
        _check_owner(owner)
        if record.owner != owner:
            raise ValueError("a record is put by its own owner")
        if not valid_id(record.response_id):
            raise ValueError(f"a stored response's id is 1 to 128 letters, digits, '_' or '-': "
                             f"{record.response_id[:140]!r}")
        _check_status(record.status)
        encoded = self.encode(record.response, record.input_items)
        await self._put(record, encoded)

    async def get(self, owner: str, response_id: str) -> Optional[StoredResponse]:
        """The owner's record of that id, or ``None`` (none, another key's, expired, or not an id at all)."""
        if not valid_id(response_id):
            return None
        return await self._get(_check_owner(owner), response_id, self.clock())

    async def update(self, owner: str, response_id: str, *, status: Status,
                     response: Optional[dict[str, Any]] = None,
                     expect: Optional[Collection[str]] = None) -> bool:
        """Set the status (and the response object, when given) of the owner's record; with ``expect``, only
        while its status is one of those (a cancel and a background run's end cannot overwrite each other).
        The expiry and the input items stay; the record with the new response stays within ``max_bytes``
        (else :class:`~unimodel.errors.StoredResponseTooLargeError`, nothing changed). ``False``: not found (as
        :meth:`get`), or its status is not in ``expect``."""
        _check_status(status)
        if expect is not None:
            expect = frozenset(_check_status(s) for s in expect)
        if not valid_id(response_id):
            return False
        body = None if response is None else self._bounded(dumps(response, "response"), 0)
        return await self._update(_check_owner(owner), response_id, status, body, expect, self.clock())

    async def delete(self, owner: str, response_id: str) -> bool:
        """Delete the owner's record; ``False`` when there was none to delete (as :meth:`get` would say)."""
        if not valid_id(response_id):
            return False
        return await self._delete(_check_owner(owner), response_id, self.clock())

    async def start(self) -> None:
        """Connect what needs connecting (a backend that is down does not fail this: its calls will)."""

    async def aclose(self) -> None:
        """Stop background work and close connections."""

    async def sweep(self) -> int:
        """Drop expired records now; how many (backends that expire on their own return 0)."""
        return 0

    def encode(self, response: dict[str, Any], input_items: list[Any]) -> Encoded:
        """The record's JSON, refused past ``max_bytes``."""
        if not isinstance(response, dict) or not isinstance(input_items, list):
            raise ValueError("a stored response is a JSON object and its input items a JSON list")
        body = dumps(response, "response")
        items = self._bounded(dumps(input_items, "input items"), len(body))
        return Encoded(body, items)

    def _bounded(self, data: bytes, other: int) -> bytes:
        if len(data) + other > self.max_bytes:
            raise StoredResponseTooLargeError(
                f"the response with its conversation is {len(data) + other} bytes of JSON, more than this server "
                f"stores ({self.max_bytes}); start a new conversation, or send it with store: false",
                param="store")
        return data

    # ---- what backends implement ---------------------------------------------------------------------------

    @abstractmethod
    async def _put(self, record: StoredResponse, encoded: Encoded) -> None: ...

    @abstractmethod
    async def _get(self, owner: str, response_id: str, now: float) -> Optional[StoredResponse]: ...

    @abstractmethod
    async def _update(self, owner: str, response_id: str, status: Status, response: Optional[bytes],
                      expect: Optional[frozenset[str]], now: float) -> bool: ...

    @abstractmethod
    async def _delete(self, owner: str, response_id: str, now: float) -> bool: ...


def decoded(response_id: str, owner: str, created_at: float, expires_at: float, status: str,
            response: bytes | str, input_items: bytes | str) -> StoredResponse:
    """A record from what a backend stored."""
    return StoredResponse(response_id=response_id, owner=owner, created_at=created_at, expires_at=expires_at,
                          status=_check_status(status), response=loads(response), input_items=loads(input_items))


@dataclass
class _Entry:
    created_at: float
    expires_at: float
    status: Status
    response: bytes
    input_items: bytes

    @property
    def size(self) -> int:
        return len(self.response) + len(self.input_items)


class MemoryResponseStore(ResponseStore):
    """In this process's memory: at most ``max_records`` records and ``max_total_bytes`` of JSON, the oldest
    dropped first when a new one needs the room (counted in ``evicted``, logged); expired ones go on each write.
    For tests and a single server without a database: a restart forgets every response."""

    kind = "memory"

    def __init__(self, *, max_records: int = 10_000, max_total_bytes: int = 256 * 1024 * 1024,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if max_records < 1:
            raise ValueError("the memory store holds at least one record")
        self.max_records = max_records
        self.max_total_bytes = max(max_total_bytes, self.max_bytes)  # a record that fits alone always fits
        self.evicted = 0
        self._bytes = 0
        # oldest first (stored, or stored again): with one retention, also the first to expire
        self._entries: collections.OrderedDict[tuple[str, str], _Entry] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def sweep(self) -> int:
        return self._drop_expired(self.clock())

    def _drop_expired(self, now: float) -> int:
        dropped = 0
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.expires_at > now:
                break
            self._remove(key)
            dropped += 1
        return dropped

    def _remove(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.size

    async def _put(self, record: StoredResponse, encoded: Encoded) -> None:
        key = (record.owner, record.response_id)
        if key in self._entries:
            self._remove(key)
        self._drop_expired(self.clock())
        while self._entries and (len(self._entries) >= self.max_records
                                 or self._bytes + encoded.size > self.max_total_bytes):
            self._remove(next(iter(self._entries)))
            self.evicted += 1
            if self.evicted == 1 or self.evicted % 1000 == 0:
                log.warning("stored responses: the in-memory store is full; %d of the oldest dropped so far "
                            "(--responses-memory-records, --responses-memory-bytes; or a database)", self.evicted)
        self._entries[key] = _Entry(record.created_at, record.expires_at, record.status, encoded.response,
                                    encoded.input_items)
        self._bytes += encoded.size

    def _live(self, owner: str, response_id: str, now: float) -> Optional[_Entry]:
        entry = self._entries.get((owner, response_id))
        return entry if entry is not None and entry.expires_at > now else None

    async def _get(self, owner: str, response_id: str, now: float) -> Optional[StoredResponse]:
        entry = self._live(owner, response_id, now)
        if entry is None:
            return None
        return decoded(response_id, owner, entry.created_at, entry.expires_at, entry.status, entry.response,
                       entry.input_items)

    async def _update(self, owner: str, response_id: str, status: Status, response: Optional[bytes],
                      expect: Optional[frozenset[str]], now: float) -> bool:
        entry = self._live(owner, response_id, now)
        if entry is None or (expect is not None and entry.status not in expect):
            return False
        if response is not None:
            self._bounded(response, len(entry.input_items))  # the record stays within max_bytes
            self._bytes += len(response) - len(entry.response)
            entry.response = response
        entry.status = status
        return True

    async def _delete(self, owner: str, response_id: str, now: float) -> bool:
        if self._live(owner, response_id, now) is None:
            return False
        self._remove((owner, response_id))
        return True
