"""The Responses API shape: ``POST /v1/responses`` onto the one chat pipeline (``service/shape.py``'s seam).

:meth:`ResponsesShape.to_chat` parses the body (:mod:`unimodel.protocol.responses`; a client's mistake is a 400
naming the place in the Responses API's own terms, ``input[2].content[0]``) and translates it
(:func:`.convert.chat_payload`); every later stage then sees a chat request. The parsed request waits in the
call (:data:`RESPONSES_REQUEST`) for the answer: :meth:`body` builds the Response object from the whole chat
completion, :meth:`stream_writer` the event stream (:mod:`.stream`). Errors keep OpenAI's error body, which the
Responses API shares with chat.

State is a collaborator's (the response store behind ``store``, ``previous_response_id``, ``background`` and
``GET``/``DELETE /v1/responses/{id}``; the sealer behind ``include: ["reasoning.encrypted_content"]``). The shape
takes them at construction, both ``None`` by default, and reads them only in its hooks: :meth:`history`,
:meth:`reasoning_opener`, :meth:`reasoning_sealer`, :meth:`stores` and :meth:`finished`. Without a store nothing
is stored: ``store`` is accepted and the Response says ``store: false``, and ``previous_response_id`` or
``background: true`` are a 400 that says why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

from pydantic import ValidationError

from unimodel.errors import InvalidRequestError
from unimodel.protocol.openai import ChatCompletionRequest
from unimodel.protocol.responses import ResponsesRequest
from unimodel.service.errors import validation_to_error
from unimodel.service.pipeline import StageState
from unimodel.service.shape import ApiShape, StreamWriter
from unimodel.shapes.responses.convert import (
    OpenSealed,
    ResponseFrame,
    chat_payload,
    frame_for,
    response_from_completion,
)
from unimodel.shapes.responses.stream import ResponsesStreamWriter

if TYPE_CHECKING:
    from unimodel.service.pipeline import Call

PATH = "/v1/responses"

#: the parsed Responses request of a call, for its answer
RESPONSES_REQUEST: StageState[ResponsesRequest] = StageState("responses.request")


class ResponsesShape(ApiShape):
    """``store``: the response store (None: nothing is stored); ``sealer``: seals and opens reasoning for
    ``reasoning.encrypted_content`` (None: not offered)."""

    name = "responses"

    def __init__(self, store: Any = None, sealer: Any = None) -> None:
        self.store = store
        self.sealer = sealer

    async def to_chat(self, data: dict[str, Any], call: "Call") -> ChatCompletionRequest:
        try:
            request = ResponsesRequest.model_validate(data)
        except ValidationError as exc:
            raise request_error(exc) from None
        if request.background:
            raise InvalidRequestError("'background: true' needs the response store, which this server does not "
                                      "have: send the request without it.", param="background")
        history = await self.history(request, call)
        payload = chat_payload(request, history, self.reasoning_opener())
        if not payload["messages"]:
            raise InvalidRequestError("'input' is required: a string, or a list of input items.", param="input")
        try:
            chat = ChatCompletionRequest.model_validate(payload)
        except ValidationError as exc:
            raise validation_to_error(exc) from None
        call.put(RESPONSES_REQUEST, request)
        return chat

    # ---- the collaborators' hooks -----------------------------------------------------------------------

    async def history(self, request: ResponsesRequest, call: "Call") -> list[Any]:
        """The parsed input items that go before ``request``'s own: the stored conversation
        ``previous_response_id`` continues (the store's integration answers it here)."""
        if request.previous_response_id is not None:
            raise InvalidRequestError("'previous_response_id' needs the response store, which this server does not "
                                      "have: send the whole conversation as 'input'.", param="previous_response_id")
        return []

    def reasoning_opener(self) -> OpenSealed:
        """What opens a reasoning item's ``encrypted_content`` into its text (None: such content is not read;
        the sealer's integration answers it here)."""
        return None

    def reasoning_sealer(self, request: ResponsesRequest) -> Optional[Callable[[str], str]]:
        """What seals a reasoning item's text into its ``encrypted_content``, when ``include`` asks for
        ``reasoning.encrypted_content`` (None: not sealed; the sealer's integration answers it here)."""
        return None

    def stores(self, request: ResponsesRequest) -> bool:
        """Whether this response is stored (what its ``store`` field says)."""
        return self.store is not None and request.store is not False

    async def finished(self, call: "Call", body: dict[str, Any]) -> None:
        return None  # the store's integration keeps ``body`` here when :meth:`stores` says so

    # ---- the answer -------------------------------------------------------------------------------------

    def frame(self, call: "Call") -> ResponseFrame:
        request = call.get(RESPONSES_REQUEST)
        assert request is not None, "the Responses shape answers only requests it parsed"
        engine = call.require_engine_request()
        effort = call.ctx.reasoning.effort if call.ctx.reasoning is not None else None
        created = call.created if call.created is not None else int(time.time())
        return frame_for(engine.completion_id, created, engine.served_model, request, effort, self.stores(request),
                         engine.include_reasoning, self.reasoning_sealer(request))

    def body(self, completion: dict[str, Any], call: "Call") -> dict[str, Any]:
        return response_from_completion(self.frame(call), completion)

    def stream_writer(self, call: "Call") -> StreamWriter:
        return ResponsesStreamWriter(self.frame(call))


# ---- a client's mistake, in the Responses API's terms ------------------------------------------------------

#: the tags of the tagged unions (input items, tools, content parts) pydantic puts after a list index
_TAGS = frozenset({"message", "function_call", "function_call_output", "reasoning", "unsupported", "function",
                   "input_text", "output_text", "refusal", "input_image", "input_file"})
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
