"""The Responses API shape: ``POST /v1/responses`` onto the one chat pipeline (``service/shape.py``'s seam).

:meth:`ResponsesShape.to_chat` parses the body (:mod:`unimodel.protocol.responses`; a client's mistake is a 400
naming the place in the Responses API's own terms, ``input[2].content[0]``) and translates it
(:func:`.convert.chat_payload`); every later stage then sees a chat request. The parsed request waits in the
call (:data:`RESPONSES_REQUEST`) for the answer: :meth:`body` builds the Response object from the whole chat
completion, :meth:`stream_writer` the event stream (:mod:`.stream`). Errors keep OpenAI's error body, which the
Responses API shares with chat.

State (``state.py``) comes at construction, all ``None`` by default, and is read only in the hooks below:

* **stored responses** (``store``, true unless the client says false, as OpenAI's): :meth:`finished` stores the
  finished Response, streamed or not, with the whole conversation's input items (the stored conversation it
  continued, then its own input), owned by the caller's key (``call.ctx.key_name``). ``previous_response_id``
  (:meth:`history`) puts the stored conversation (its input items, then its output items) before the new input;
  one this key cannot see (never stored, another key's, expired, deleted) is OpenAI's 400
  ``previous_response_not_found`` ("Previous response with id '…' not found."), one still running a 400 too; a
  store that cannot be read is a 503. Without a store (``--responses-store off``) ``store`` is accepted and the
  Response says ``store: false``, and ``previous_response_id`` or ``background: true`` are a 400 that says why.
  A store that fails on **write**: the non-streamed request is answered 503 ``store_unavailable`` instead of its
  body (the client asked for a response it can continue, and would otherwise learn only on the next turn that
  it cannot; the SDKs retry a 503); a streamed one has sent its answer already, so the failure is logged (error
  level, with the response id) and the stream ends as it was. A conversation too big to store is refused before
  the model is asked (400 ``response_too_large``).
* **background** (``background: true``, which needs ``store``: with ``store: false`` a 400, as OpenAI's; with
  ``stream: true`` a 400 too, not supported): the request runs the whole pipeline as any other, then
  :meth:`detach` stores it ``in_progress``, answers that Response at once and leaves the generation to a task of
  the server's (:mod:`.background`), which stores the final Response; see :mod:`.stored` for cancel.
* **sealed reasoning** (``include: ["reasoning.encrypted_content"]``, :meth:`reasoning_sealer`): every reasoning
  item, streamed and in the body, carries ``encrypted_content``, the sealer's token of its text and the key it
  was made for; a reasoning input item with ``encrypted_content`` is opened (:meth:`reasoning_opener`: a token
  this server cannot open, or one made for another key, is a 400 naming the item) and its text, not whatever
  summary came with it, is the reasoning of the assistant message it precedes.
* **tools**: a namespace's functions reach the model as ``<namespace>__<name>`` and its calls come back with
  ``name`` and ``namespace`` apart; hosted tools (``web_search`` …) are accepted, logged at debug level, and not
  shown to the model (:mod:`unimodel.protocol.responses`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

from pydantic import ValidationError

from unimodel.errors import (
    EncryptedContentError,
    InvalidRequestError,
    PreviousResponseNotFoundError,
    UnimodelError,
)
from unimodel.protocol.openai import ChatCompletionRequest
from unimodel.protocol.responses import INPUT_ITEMS, ResponsesRequest
from unimodel.service.errors import validation_to_error
from unimodel.service.pipeline import StageState
from unimodel.service.shape import ApiShape, StreamWriter
from unimodel.shapes.responses.background import BackgroundRuns
from unimodel.shapes.responses.convert import (
    OpenSealed,
    ResponseFrame,
    chat_payload,
    frame_for,
    response_from_completion,
    response_object,
)
from unimodel.shapes.responses.sealing import ReasoningSealer
from unimodel.shapes.responses.store import RUNNING, ResponseStore
from unimodel.shapes.responses.stream import ResponsesStreamWriter

if TYPE_CHECKING:
    from unimodel.service.chat import ChatService, PreparedChat
    from unimodel.service.pipeline import Call

log = logging.getLogger("unimodel.responses")

PATH = "/v1/responses"

#: the parsed Responses request of a call, for its answer
RESPONSES_REQUEST: StageState[ResponsesRequest] = StageState("responses.request")
#: the whole conversation's input items (JSON) a stored response keeps: the stored context, then its own input
_STORED_INPUT: StageState[list[Any]] = StageState("responses.stored_input")

ENCRYPTED_REASONING = "reasoning.encrypted_content"


class ResponsesShape(ApiShape):
    """``store``: the response store (None: nothing is stored); ``sealer``: seals and opens reasoning for
    ``reasoning.encrypted_content`` (None: not offered); ``runs``: this process's background runs (None: with a
    store, an unbounded set of its own)."""

    name = "responses"

    def __init__(self, store: Optional[ResponseStore] = None, sealer: Optional[ReasoningSealer] = None,
                 runs: Optional[BackgroundRuns] = None) -> None:
        self.store = store
        self.sealer = sealer
        self.runs = runs if runs is not None else BackgroundRuns()

    async def to_chat(self, data: dict[str, Any], call: "Call") -> ChatCompletionRequest:
        try:
            request = ResponsesRequest.model_validate(data)
        except ValidationError as exc:
            raise request_error(exc) from None
        if request.background:
            self._check_background(request)
        if request.tools and log.isEnabledFor(logging.DEBUG) and request.hosted_tools:
            log.debug("request %s: hosted tools accepted and not used (this server runs none): %s",
                      call.ctx.request_id, ", ".join(request.hosted_tools))
        history = await self.history(request, call)
        payload = chat_payload(request, history, self.reasoning_opener(call))
        if request.background:  # the server reads it as it is made (an upstream streams: the answer comes at once)
            payload["stream"], payload["stream_options"] = True, {"include_usage": True}
        if not payload["messages"]:
            raise InvalidRequestError("'input' is required: a string, or a list of input items.", param="input")
        try:
            chat = ChatCompletionRequest.model_validate(payload)
        except ValidationError as exc:
            raise validation_to_error(exc) from None
        if request.previous_response_id is not None:  # found (history): the answer it continues is a session
            chat.continuing("chatcmpl-" + request.previous_response_id.removeprefix("resp_"))
        if self.stores(request):
            assert self.store is not None
            items = [*(call.pop(_STORED_INPUT) or ()), *_input_json(data.get("input"))]
            self.store.encode({}, items)  # too big to store: refused now, before the model is asked
            call.put(_STORED_INPUT, items)
        call.put(RESPONSES_REQUEST, request)
        return chat

    def _check_background(self, request: ResponsesRequest) -> None:
        if self.store is None:
            raise InvalidRequestError("'background: true' needs the response store, which this server does not "
                                      "have: send the request without it.", param="background")
        if request.store is False:
            raise InvalidRequestError("Background responses are stored ('background: true' needs 'store: true'): "
                                      "send 'store: true', or leave 'background' out.", param="background")
        if request.stream:
            raise InvalidRequestError("'background: true' with 'stream: true' is not supported: send it without "
                                      "'stream' and poll GET /v1/responses/{id} until it is done.", param="stream")
        self.runs.check()  # full (429), before the engine is asked; the slot itself is taken in detach

    # ---- the state's hooks ------------------------------------------------------------------------------

    async def history(self, request: ResponsesRequest, call: "Call") -> list[Any]:
        """The parsed input items that go before ``request``'s own: the stored conversation
        ``previous_response_id`` continues, read as the caller (whose key owns it)."""
        previous = request.previous_response_id
        if previous is None:
            return []
        if self.store is None:
            raise InvalidRequestError("'previous_response_id' needs the response store, which this server does not "
                                      "have: send the whole conversation as 'input'.", param="previous_response_id")
        record = await self.store.get(_owner(call), previous)
        if record is None:
            raise PreviousResponseNotFoundError(f"Previous response with id '{previous}' not found.",
                                                param="previous_response_id")
        if record.status in RUNNING:
            raise InvalidRequestError(f"Previous response with id '{previous}' is still {record.status}: wait "
                                      "until it is done.", param="previous_response_id")
        context = record.context_items()
        call.put(_STORED_INPUT, context)
        try:
            return INPUT_ITEMS.validate_python([_trusted(item) for item in context])
        except ValidationError:  # written by this server, so never: a store shared with something else
            log.exception("the stored conversation of %s cannot be read back", previous)
            raise PreviousResponseNotFoundError(f"Previous response with id '{previous}' cannot be continued: its "
                                                "stored conversation is unreadable.",
                                                param="previous_response_id") from None

    def reasoning_opener(self, call: "Call") -> OpenSealed:
        """What opens a reasoning item's ``encrypted_content`` into its text: a token of this server's sealer,
        made for the caller's key (None without a sealer: such content is not read)."""
        sealer = self.sealer
        if sealer is None:
            return None
        owner = _owner(call)

        def open_sealed(token: str) -> str:
            value = sealer.open(token)
            text = value.get("text")
            if value.get("owner") != owner:
                raise EncryptedContentError("the encrypted reasoning cannot be opened: it was made for another API "
                                            "key")
            if not isinstance(text, str):
                raise EncryptedContentError("the encrypted reasoning cannot be opened: it holds no reasoning text")
            return text

        return open_sealed

    def reasoning_sealer(self, request: ResponsesRequest, call: "Call") -> Optional[Callable[[str], str]]:
        """What seals a reasoning item's text (and the key it is for) into its ``encrypted_content``, when
        ``include`` asks for ``reasoning.encrypted_content`` (None: not sealed)."""
        sealer = self.sealer
        if sealer is None or not request.include or ENCRYPTED_REASONING not in request.include:
            return None
        owner = _owner(call)
        return lambda text: sealer.seal({"text": text, "owner": owner})

    def stores(self, request: ResponsesRequest) -> bool:
        """Whether this response is stored (what its ``store`` field says)."""
        return self.store is not None and request.store is not False

    async def finished(self, call: "Call", body: dict[str, Any]) -> None:
        """Store the finished Response (a background one's record is moved on from ``in_progress``, unless a
        cancel came first); a store that fails raises (the module docstring says what the client then sees)."""
        request = call.get(RESPONSES_REQUEST)
        if request is None or not self.stores(request):
            return
        assert self.store is not None
        owner = _owner(call)
        if request.background:
            if not await self.store.update(owner, body["id"], status=body["status"], response=body,
                                           expect=RUNNING):
                log.info("background response %s ended after it was cancelled or deleted: its answer is dropped",
                         body["id"])
            return
        try:
            await self.store.put(owner, self.store.record(owner, body, call.get(_STORED_INPUT) or []))
        except UnimodelError as exc:
            log.error("response %s (request %s) was answered but not stored: %s", body.get("id"),
                      call.ctx.request_id, exc.message)
            raise

    # ---- background ---------------------------------------------------------------------------------------

    def detaches(self, call: "Call") -> bool:
        request = call.get(RESPONSES_REQUEST)
        return request is not None and bool(request.background)

    async def detach(self, service: "ChatService", prepared: "PreparedChat") -> dict[str, Any]:
        """Store the admitted background request ``in_progress``, start its run, answer that Response now."""
        call = prepared.call
        try:
            assert self.store is not None, "to_chat refuses background without a store"
            slot = self.runs.reserve()  # synchronous: the bound holds whatever else is admitted meanwhile
            try:
                frame = self.frame(call)
                snapshot = response_object(frame, status="in_progress", output=[], usage=None)
                owner = _owner(call)
                await self.store.put(owner, self.store.record(owner, snapshot, call.get(_STORED_INPUT) or [],
                                                              status="in_progress"))
                self.runs.start(slot, owner, frame.response_id, self._run(service, prepared, owner, frame))
            finally:
                slot.release()  # a no-op once the run has it
        except BaseException as exc:
            await service.abandon(prepared, exc)  # ends it (stages released, logged) with this refusal
            raise
        log.info("background response %s (request %s) runs", frame.response_id, call.ctx.request_id)
        return snapshot

    async def _run(self, service: "ChatService", prepared: "PreparedChat", owner: str,
                   frame: ResponseFrame) -> None:
        """A background request to its end: :meth:`finished` stores the final Response; a failure, a cancel or
        the shutdown stores what it was."""
        try:
            await service.complete(prepared)
        except asyncio.CancelledError:
            if self.runs.closing:
                await self._settle(owner, frame, "failed", {
                    "code": "server_error", "message": "The server shut down before the response was complete."})
            else:  # a client's cancel: the record says so already
                await self._settle(owner, frame, "cancelled", None)
        except UnimodelError as exc:
            await self._settle(owner, frame, "failed", {
                "code": "rate_limit_exceeded" if exc.status_code == 429 else "server_error", "message": exc.message})
        except Exception:
            log.exception("background response %s failed", frame.response_id)
            await self._settle(owner, frame, "failed", {
                "code": "server_error", "message": "The server had an internal error; it is logged."})

    async def _settle(self, owner: str, frame: ResponseFrame, status: str, error: Optional[dict[str, Any]]) -> None:
        assert self.store is not None
        body = response_object(frame, status=status, output=[], usage=None, error=error)
        try:
            if await self.store.update(owner, frame.response_id, status=status,  # type: ignore[arg-type]
                                       response=body, expect=RUNNING):
                log.info("background response %s ended %s%s", frame.response_id, status,
                         f": {error['message']}" if error else "")
        except Exception:
            log.exception("background response %s ended %s, which could not be stored", frame.response_id, status)

    # ---- the answer -------------------------------------------------------------------------------------

    def frame(self, call: "Call") -> ResponseFrame:
        request = call.get(RESPONSES_REQUEST)
        assert request is not None, "the Responses shape answers only requests it parsed"
        engine = call.require_engine_request()
        effort = call.ctx.reasoning.effort if call.ctx.reasoning is not None else None
        created = call.created if call.created is not None else int(time.time())
        return frame_for(engine.completion_id, created, engine.served_model, request, effort, self.stores(request),
                         engine.include_reasoning, self.reasoning_sealer(request, call))

    def body(self, completion: dict[str, Any], call: "Call") -> dict[str, Any]:
        return response_from_completion(self.frame(call), completion)

    def stream_writer(self, call: "Call") -> StreamWriter:
        return ResponsesStreamWriter(self.frame(call))


def _owner(call: "Call") -> str:
    """Whose stored responses and sealed reasoning these are: the caller's key name (auth ran first)."""
    return call.ctx.key_name or "anonymous"


def _input_json(value: Any) -> list[Any]:
    """A request's ``input`` as the input items a stored conversation keeps (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    return list(value) if isinstance(value, list) else []


def _trusted(item: Any) -> Any:
    """A stored item as the next turn reads it: a reasoning item this server wrote keeps its text beside its
    token, so the text is read (a token sealed by a key since rotated, or a process's own key, still reads)."""
    if isinstance(item, dict) and item.get("type") == "reasoning" and item.get("encrypted_content") and (
            item.get("content") or item.get("summary")):
        return {**item, "encrypted_content": None}
    return item


# ---- a client's mistake, in the Responses API's terms ------------------------------------------------------

#: the tags of the tagged unions (input items, tools, content parts) pydantic puts after a list index
_TAGS = frozenset({"message", "function_call", "function_call_output", "reasoning", "unsupported", "function",
                   "namespace", "hosted", "input_text", "output_text", "refusal", "input_image", "input_file"})
_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def request_error(exc: ValidationError) -> InvalidRequestError:
    """The most specific problem of a pydantic error, with ``param`` a path like ``input[2].content[0]``."""
    def path(loc: tuple[Any, ...]) -> str:
        out, previous = "", None
        for part in loc:
            if isinstance(part, int):
                out += f"[{part}]"
            elif not ((isinstance(previous, int) and part in _TAGS) or part in _TYPE_NAMES or "[" in part
                      or part[:1].isupper()):
                out += ("." if out else "") + part
            previous = part
        return out[:256]

    # the deepest place; at one depth, our own words (a refused tool type) over a union member's mismatch
    err = max(exc.errors(), key=lambda e: (len(path(tuple(e.get("loc", ())))), e.get("type") == "value_error"))
    param = path(tuple(err.get("loc", ()))) or None
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return InvalidRequestError(f"Invalid request: {f'{param!r}: ' if param else ''}{message}", param=param)
