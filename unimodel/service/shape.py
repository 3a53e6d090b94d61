"""API shapes: each wire form the server speaks is an adapter onto the one chat pipeline.

A request in any shape (OpenAI chat completions, OpenAI Responses, Anthropic Messages …) becomes the same
:class:`~unimodel.protocol.openai.ChatCompletionRequest` in the parse stage (:meth:`ApiShape.to_chat`), so every
later stage (routes, validation, limits and quotas, images, idempotency, resilience) and every observer (the
request log, the metrics) sees one kind of request and cannot tell which shape it came in. On the way back the
same neutral events become the shape's own answer: :meth:`ApiShape.body` turns the whole chat completion into
the shape's body, :meth:`ApiShape.stream_writer` gives the writer of its stream, :meth:`ApiShape.error_body` the
shape's error body. The base class is the chat-completions shape itself.

A shape may keep state across requests (the Responses API's stored responses): :meth:`to_chat` is async and
sees the call (its caller is known by then: auth runs first), and :meth:`finished` runs once the answer is
complete, before it is sent. A shape may also answer a request at once and run it on its own (the Responses API's
``background: true``): once the pipeline has admitted it (every stage entered, the engine's first event out, so a
refusal is still the client's answer), :meth:`detaches` says so and :meth:`detach` takes the prepared request over
and gives the answer to send now.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Optional, Protocol

from pydantic import ValidationError

from unimodel.errors import UnimodelError
from unimodel.protocol.events import Event
from unimodel.protocol.openai import ChatCompletionRequest
from unimodel.protocol.sse import DONE, frame
from unimodel.service.assemble import ChunkEncoder
from unimodel.service.errors import validation_to_error

if TYPE_CHECKING:
    from unimodel.service.chat import ChatService, PreparedChat
    from unimodel.service.pipeline import Call


class StreamWriter(Protocol):
    """Turns the events of one streamed answer into the bytes of the shape's stream. ``events`` are what one
    body write carries (adjacent deltas already merged); the last write is :meth:`closing`'s."""

    def opening(self, events: Sequence[Event]) -> bytes:
        """The first write: the stream's preamble and the first events (the engine's first event is known)."""
        ...

    def write(self, events: Sequence[Event]) -> bytes:
        ...

    def closing(self, events: Sequence[Event], error: Optional[UnimodelError]) -> bytes:
        """The last write: the last events, then the stream's end, or its error when ``error`` is set."""
        ...

    def result(self) -> Optional[dict[str, Any]]:
        """Once closed: the whole answer in the shape's form, for :meth:`ApiShape.finished` (None: not kept)."""
        ...


class ApiShape:
    """The chat-completions shape; other shapes override what differs."""

    #: the shape's name (``chat.completions``, ``responses``, ``messages``): log lines and the stored call
    name = "chat.completions"

    async def to_chat(self, data: dict[str, Any], call: "Call") -> ChatCompletionRequest:
        """The client's JSON object as the chat request every stage reads; a client's mistake is an
        :class:`~unimodel.errors.UnimodelError` naming the place in the shape's own terms."""
        try:
            return ChatCompletionRequest.model_validate(data)
        except ValidationError as exc:
            raise validation_to_error(exc) from None

    def body(self, completion: dict[str, Any], call: "Call") -> dict[str, Any]:
        """The non-streamed answer, from the whole ``chat.completion`` (with ``unimodel_reasoning``)."""
        return completion

    def stream_writer(self, call: "Call") -> StreamWriter:
        request = call.require_engine_request()
        wire = call.client_request
        assert call.ctx.reasoning is not None
        return ChatStreamWriter(ChunkEncoder(request.completion_id, request.served_model,
                                             include_reasoning=request.include_reasoning,
                                             include_usage=bool(wire and wire.wants_usage_in_stream),
                                             applied=call.ctx.reasoning, created=call.created,
                                             n=request.n))

    def error_body(self, error: UnimodelError) -> dict[str, Any]:
        return error.to_dict()

    async def finished(self, call: "Call", body: dict[str, Any]) -> None:
        """The whole answer in this shape's form, once the request has ended and before its last byte is sent
        (a stateful shape stores it here, so a follow-up request that comes right after finds it)."""
        return None

    def detaches(self, call: "Call") -> bool:
        """Whether this admitted request is answered at once and run to its end by the shape (:meth:`detach`)."""
        return False

    async def detach(self, service: "ChatService", prepared: "PreparedChat") -> dict[str, Any]:
        """Take over ``prepared`` (the shape now owns its end: it must run it to its end, or end it with
        :meth:`ChatService.abandon`) and give the body to answer with now; an
        :class:`~unimodel.errors.UnimodelError` is the client's answer instead (``prepared`` ended already)."""
        raise NotImplementedError(f"the {self.name} shape does not run requests on its own")


class ChatStreamWriter:
    """``chat.completion.chunk`` frames, ``[DONE]`` last; a failure is an OpenAI error frame before it."""

    __slots__ = ("encoder",)

    def __init__(self, encoder: ChunkEncoder) -> None:
        self.encoder = encoder

    def opening(self, events: Sequence[Event]) -> bytes:
        encoder = self.encoder
        first = frame(encoder.first()) if encoder.n == 1 else b"".join(frame(encoder.first(i))
                                                                        for i in range(encoder.n))
        return first + self.write(events)

    def write(self, events: Sequence[Event]) -> bytes:
        return b"".join([frame(c) for c in self.encoder.encode_all(events)])  # logprobs ride on their delta

    def closing(self, events: Sequence[Event], error: Optional[UnimodelError]) -> bytes:
        tail = self.write(events)
        if error is not None:
            tail += frame(error.to_dict())
        return tail + DONE

    def result(self) -> Optional[dict[str, Any]]:
        return None


CHAT = ApiShape()
