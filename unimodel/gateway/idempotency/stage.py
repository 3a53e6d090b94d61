"""The idempotency stage: a request repeated with the same ``Idempotency-Key`` runs once.

* The first request with a key claims it and runs; its neutral events are recorded as they pass to the client
  and, only if it ended with a ``Finish`` and no error, stored with its request id and ``created`` time.
  A failed or abandoned first request releases the key, so a retry runs.
* A repeat with the same body is answered from the store, through the same encoder (a streamed repeat is
  streamed again, chunk for chunk, with the same completion id), with ``Idempotent-Replayed: true``; the
  engine is not called.
* The same key with a different body is a 409 ``idempotency_key_reused``. "Same body" is the SHA-256 of the
  raw request bytes and the route: ``stream`` is part of the body, so the streamed and the plain form of one
  request are two requests (the stored events could serve either, but a client that changes its request
  under one key has a bug worth reporting).
* A repeat while the first still runs waits for it (at most ``wait_s``, then 409 ``idempotency_key_in_use``
  with ``Retry-After``), or gets that 409 at once in ``conflict`` mode; never a second engine call.

Keys are scoped to the caller (``ctx.key_name``) and hashed before they reach a store. A store that is down
(Redis) means serving without idempotency, logged once per outage and counted in ``/ready``; the store is
then left alone for a second before it is asked again. Without the header the stage costs one header lookup.
Hand-written: the IETF draft's semantics are a few dozen lines over the pipeline's hooks; the libraries
for it are web-framework middlewares that store bytes, which a streamed replay through our encoder cannot use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from unimodel.engines.base import GenerationRequest
from unimodel.errors import IdempotencyKeyInUseError, IdempotencyKeyReusedError, InvalidRequestError
from unimodel.gateway.idempotency.record import RecordError, StoredResponse, decode, encode, event_size
from unimodel.gateway.idempotency.store import (
    Claimed,
    Done,
    IdempotencyStore,
    StoreUnavailableError,
)
from unimodel.protocol.events import Event, Finish
from unimodel.service.pipeline import Call, Generate, Stage, StageState

log = logging.getLogger("unimodel.idempotency")

HEADER = "idempotency-key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_CHARS = 255
InFlightMode = Literal["wait", "conflict"]


@dataclass(eq=False, slots=True)
class _Pending:
    """What the stage knows of one request that sent a key: the claim it owns, or the response it replays."""

    key: str
    fingerprint: str
    token: Optional[str] = None
    replay: Optional[StoredResponse] = None
    events: list[Event] = field(default_factory=list)
    size: int = 0
    overflow: bool = False


def checked_key(raw: str) -> str:
    """The header's value if it is 1–255 printable ASCII characters; else a 400 naming the header."""
    key = raw.strip()
    if not 0 < len(key) <= MAX_KEY_CHARS or not all(" " <= ch <= "~" for ch in key):
        raise InvalidRequestError(f"The Idempotency-Key header must be 1 to {MAX_KEY_CHARS} printable ASCII "
                                  "characters.", param="Idempotency-Key")
    return key


_PENDING: StageState[_Pending] = StageState("idempotency")


class IdempotencyStage(Stage):
    name = "idempotency"

    def __init__(self, store: IdempotencyStore, *, in_flight: InFlightMode = "wait", wait_s: float = 60.0,
                 max_bytes: int = 4 * 1024 * 1024, retry_after_s: float = 1.0,
                 outage_backoff_s: float = 1.0) -> None:
        self.store = store
        self.in_flight, self.wait_s, self.max_bytes = in_flight, wait_s, max_bytes
        self.retry_after_s, self.outage_backoff_s = retry_after_s, outage_backoff_s
        self._down = False
        self._ask_again_at = 0.0
        self._settling: set[asyncio.Future[None]] = set()
        self.counts = {"first": 0, "replayed": 0, "stored": 0, "not_stored_too_large": 0, "released": 0,
                       "reused": 0, "in_use": 0, "store_unavailable": 0}

    async def start(self) -> None:
        await self.store.start()

    async def aclose(self) -> None:
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        await self.store.aclose()

    def status(self) -> dict[str, Any]:
        return {**self.store.status(), "available": not self._down, "in_flight_mode": self.in_flight,
                **self.counts}

    async def check(self) -> Optional[str]:
        if await self.store.check():
            return None
        return f"the idempotency store ({self.store.kind}) is down: Idempotency-Key is not honoured until it is back"

    # ---- the hooks ------------------------------------------------------------------------------------

    async def enter(self, call: Call) -> None:
        raw = call.headers.get(HEADER)
        if raw is None:
            return
        client_key = checked_key(raw)
        if self._down and time.monotonic() < self._ask_again_at:
            self._unavailable(call, None)
            return
        body = await call.read_body()
        fingerprint = hashlib.sha256(body)
        fingerprint.update(b"\0" + (call.ctx.route or "").encode())
        fp = fingerprint.hexdigest()
        scope = call.ctx.key_name or "anonymous"
        key = hashlib.sha256(f"{scope}\0{client_key}".encode()).hexdigest()
        try:
            await self._claim(call, key, fp)
        except StoreUnavailableError as exc:
            self._unavailable(call, exc)
            return
        self._store_ok()

    def wrap(self, call: Call, generate: Generate) -> Generate:
        pending = call.get(_PENDING)
        if pending is None:
            return generate
        if pending.replay is not None:
            stored = pending.replay.events

            async def replay(request: GenerationRequest) -> AsyncIterator[Event]:
                for event in stored:
                    yield event

            return replay
        max_bytes = self.max_bytes

        async def record(request: GenerationRequest) -> AsyncIterator[Event]:
            async with aclosing(generate(request)) as events:  # type: ignore[type-var]
                async for event in events:
                    if not pending.overflow:
                        pending.size += event_size(event)
                        if pending.size > max_bytes:
                            pending.overflow = True
                            pending.events.clear()
                        else:
                            pending.events.append(event)
                    yield event

        return record

    async def exit(self, call: Call, error: Optional[BaseException]) -> None:
        pending = call.get(_PENDING)
        if pending is None or pending.token is None:
            return
        if not self.store.remote:
            await self._settle(call, pending, error)  # never suspends: nothing can interrupt it
            return
        # A task of its own only so that aclose waits for the settlements still under way at shutdown; no
        # shield: the pipeline runs every exit to its end, even a client's that left.
        settle = asyncio.ensure_future(self._settle(call, pending, error))
        self._settling.add(settle)
        settle.add_done_callback(self._settling.discard)
        await settle

    # ---- the parts ------------------------------------------------------------------------------------

    async def _claim(self, call: Call, key: str, fp: str) -> None:
        deadline = time.monotonic() + self.wait_s
        while True:
            held = await self.store.claim(key, fp)
            if isinstance(held, Claimed):
                call.put(_PENDING, _Pending(key, fp, token=held.token))
                call.ctx.idempotency = "first"
                self.counts["first"] += 1
                return
            if isinstance(held, Done):
                try:
                    stored = decode(held.record)
                except RecordError as exc:
                    log.warning("request %s: the stored response of its idempotency key is unreadable (%s); "
                                "serving it without idempotency", call.ctx.request_id, exc)
                    return
                if stored.fingerprint != fp:
                    self._reused()
                self._replay(call, key, fp, stored)
                return
            if held.fingerprint != fp:
                self._reused()
            left = deadline - time.monotonic()
            if self.in_flight == "conflict" or left <= 0:
                self.counts["in_use"] += 1
                raise IdempotencyKeyInUseError(
                    "A request with this Idempotency-Key is still being processed; retry after a moment.",
                    param="Idempotency-Key", retry_after=self.retry_after_s)
            await self.store.wait(key, left)

    def _reused(self) -> None:
        self.counts["reused"] += 1
        raise IdempotencyKeyReusedError("This Idempotency-Key was already used with a different request body.",
                                        param="Idempotency-Key")

    def _replay(self, call: Call, key: str, fp: str, stored: StoredResponse) -> None:
        call.engine_request = dataclasses.replace(call.require_engine_request(), completion_id=stored.completion_id)
        call.created = stored.created
        call.response_headers[REPLAYED_HEADER] = "true"
        call.put(_PENDING, _Pending(key, fp, replay=stored))
        call.ctx.idempotency = "replayed"
        self.counts["replayed"] += 1

    async def _settle(self, call: Call, pending: _Pending, error: Optional[BaseException]) -> None:
        assert pending.token is not None
        try:
            finished = bool(pending.events) and isinstance(pending.events[-1], Finish)
            if error is None and finished and not pending.overflow:
                record = encode(StoredResponse(pending.fingerprint, call.require_engine_request().completion_id,
                                               call.created or int(time.time()), tuple(pending.events)))
                if len(record) <= self.max_bytes:
                    await self.store.finish(pending.key, pending.token, record)
                    self.counts["stored"] += 1
                    self._store_ok()
                    return
                pending.overflow = True
            if error is None and pending.overflow:
                self.counts["not_stored_too_large"] += 1
                log.info("request %s: its response is over --idempotency-max-bytes (%d); not stored, the key "
                         "is released", call.ctx.request_id, self.max_bytes)
            await self.store.release(pending.key, pending.token)
            self.counts["released"] += 1
            self._store_ok()
        except StoreUnavailableError as exc:
            self._unavailable(call, exc)

    def _unavailable(self, call: Call, exc: Optional[StoreUnavailableError]) -> None:
        call.ctx.idempotency = "unavailable"
        self.counts["store_unavailable"] += 1
        if exc is None:
            return
        self._ask_again_at = time.monotonic() + self.outage_backoff_s
        if not self._down:
            self._down = True
            log.warning("the idempotency store (%s) is unavailable (%s): requests are served without "
                        "idempotency until it is back", self.store.kind, exc)

    def _store_ok(self) -> None:
        if self._down:
            self._down = False
            log.warning("the idempotency store (%s) is back", self.store.kind)
