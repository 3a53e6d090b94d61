"""The stored responses' own API: ``GET``/``DELETE /v1/responses/{id}``, ``POST /v1/responses/{id}/cancel`` and
``GET /v1/responses/{id}/input_items``, as OpenAI answers them.

HTTP-free: the routes (``server/routes/responses.py``) authenticate through the auth stage and hand the caller's
key name here, which owns every lookup: another key's response, an expired or deleted one and an id that never
existed are all the same 404 (``Response with id '…' not found.``), so a key cannot learn that another's exists.
A store that cannot be read is a 503 (:class:`~unimodel.errors.ResponseStoreUnavailableError`, from the store).

Cancelling (OpenAI's rules): a background response still queued or in progress becomes ``cancelled`` (the stored
record first, with ``expect=RUNNING``, so a run that ends meanwhile cannot be overwritten, nor overwrite it; then
the run is stopped if this process runs it: :mod:`.background`); cancelling a cancelled one again answers it
again; any other (completed, failed, a foreground response) is a 400.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from unimodel.errors import InvalidRequestError, ResponseNotFoundError
from unimodel.shapes.responses.background import BackgroundRuns
from unimodel.shapes.responses.store import RUNNING, ResponseStore, StoredResponse

MAX_LIST_LIMIT = 100
DEFAULT_LIST_LIMIT = 20


class StoredResponses:
    """``store``: None when storing is off (every id is then not found, saying why); ``runs``: this process's
    background runs (None: none)."""

    def __init__(self, store: Optional[ResponseStore], runs: Optional[BackgroundRuns] = None) -> None:
        self.store = store
        self.runs = runs

    async def retrieve(self, owner: str, response_id: str) -> dict[str, Any]:
        return (await self._record(owner, response_id)).response

    async def delete(self, owner: str, response_id: str) -> dict[str, Any]:
        store = self._store(response_id)
        if not await store.delete(owner, response_id):
            raise _not_found(response_id)
        if self.runs is not None:  # a background run of it here has nowhere left to store its answer
            await self.runs.cancel(owner, response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    async def cancel(self, owner: str, response_id: str) -> dict[str, Any]:
        store = self._store(response_id)
        record = await self._record(owner, response_id)
        if record.status in RUNNING:
            cancelled = {**record.response, "status": "cancelled", "completed_at": None}
            if await store.update(owner, response_id, status="cancelled", response=cancelled, expect=RUNNING):
                if self.runs is not None:
                    await self.runs.cancel(owner, response_id)
                return cancelled
            record = await self._record(owner, response_id)  # it ended (or went) meanwhile: answer what it is now
        if record.status == "cancelled":
            return record.response
        raise InvalidRequestError(
            f"Cannot cancel a response whose status is '{record.status}': only a background response that is "
            "queued or in progress can be cancelled.", param="response_id")

    async def input_items(self, owner: str, response_id: str, *, limit: int = DEFAULT_LIST_LIMIT,
                          order: Literal["asc", "desc"] = "desc", after: Optional[str] = None) -> dict[str, Any]:
        """The conversation's input items up to that response (a page of them), as OpenAI's list object; an item
        stored without an id gets one (``in_<response>_<n>``: stable, so ``after`` pages through them)."""
        if not 1 <= limit <= MAX_LIST_LIMIT:
            raise InvalidRequestError(f"'limit' is 1 to {MAX_LIST_LIMIT}.", param="limit")
        record = await self._record(owner, response_id)
        suffix = response_id.removeprefix("resp_")
        items = [_with_id(item, f"in_{suffix}_{n}") for n, item in enumerate(record.input_items)]
        if order == "desc":
            items.reverse()
        if after is not None:
            at = next((n for n, item in enumerate(items) if item.get("id") == after), None)
            if at is None:
                raise InvalidRequestError(f"'after': no input item of this response has the id '{after[:128]}'.",
                                          param="after")
            items = items[at + 1:]
        page = items[:limit]
        return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}

    async def _record(self, owner: str, response_id: str) -> StoredResponse:
        record = await self._store(response_id).get(owner, response_id)
        if record is None:
            raise _not_found(response_id)
        return record

    def _store(self, response_id: str) -> ResponseStore:
        if self.store is None:
            raise _not_found(response_id, " (this server does not store responses: --responses-store off)")
        return self.store


def _not_found(response_id: str, why: str = "") -> ResponseNotFoundError:
    return ResponseNotFoundError(f"Response with id '{response_id[:128]}' not found.{why}", param="response_id")


def _with_id(item: Any, item_id: str) -> dict[str, Any]:
    if not isinstance(item, dict):  # (never stored by this server: every input item is a JSON object)
        return {"id": item_id, "type": "unknown"}
    return item if isinstance(item.get("id"), str) and item["id"] else {"id": item_id, **item}
