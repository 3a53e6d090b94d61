"""The Responses shape wired to its state: stored responses (``store``, ``previous_response_id``), sealed reasoning
(``include: ["reasoning.encrypted_content"]``), background runs and their bound, the stored responses' own API
(retrieve, delete, cancel, input items), and Codex's default tools (a namespace, a hosted tool). On a real
in-memory store and a real sealer; the engine side is the chat completion the service would build."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Optional

import pytest
from openai.types.responses import Response

from unimodel.engines.base import GenerationRequest
from unimodel.errors import (
    EncryptedContentError,
    InvalidRequestError,
    PreviousResponseNotFoundError,
    RateLimitError,
    ResponseNotFoundError,
    ResponseStoreUnavailableError,
    StoredResponseTooLargeError,
)
from unimodel.protocol.events import Finish, ReasoningDelta, ToolCallArgsDelta, ToolCallEnd, ToolCallStart, Usage
from unimodel.protocol.responses import ResponsesRequest
from unimodel.service.assemble import CompletionBuilder
from unimodel.service.context import RequestContext
from unimodel.service.pipeline import Call
from unimodel.shapes.responses.background import BackgroundRuns
from unimodel.shapes.responses.convert import chat_payload
from unimodel.shapes.responses.sealing import ReasoningSealer
from unimodel.shapes.responses.shape import ResponsesShape
from unimodel.shapes.responses.store import MemoryResponseStore, StoredResponse
from unimodel.shapes.responses.stored import StoredResponses
from unimodel.shapes.responses.stream import ResponsesStreamWriter

NAMESPACE = {"type": "namespace", "name": "multi_agent_v1", "description": "agents", "tools": [
    {"type": "function", "name": "spawn_agent", "parameters": {"type": "object"}, "strict": False}]}
WEB_SEARCH = {"type": "web_search", "external_web_access": False}
SHELL = {"type": "function", "name": "exec_command", "parameters": {"type": "object"}}
_ids = iter(range(10_000))


def new_call(key: str = "alice") -> Call:
    async def body() -> bytes:
        return b""

    call = Call(RequestContext(f"{next(_ids):032x}"), {}, body)
    call.ctx.key_name = key
    return call


def answered(shape: ResponsesShape, call: Call, events: list[Any]) -> dict[str, Any]:
    """What the service does after to_chat: validate (here: a GenerationRequest made by hand), build the whole
    completion from ``events``, and ask the shape for its body."""
    call.engine_request = GenerationRequest(messages=[], completion_id=f"chatcmpl-{call.ctx.request_id}",
                                            served_model="m")
    call.created = 1_700_000_000
    completion = CompletionBuilder(True).add_all(events).completion(
        call.engine_request.completion_id, "m", call.created).model_dump(mode="json")
    return shape.body(completion, call)


def turn(shape: ResponsesShape, data: dict[str, Any], events: list[Any], key: str = "alice") -> tuple[Call, dict]:
    call = new_call(key)

    async def go() -> dict[str, Any]:
        call.client_request = await shape.to_chat({"model": "m", **data}, call)
        body = answered(shape, call, events)
        await shape.finished(call, body)
        return body

    return call, asyncio.run(go())


THINK_AND_ANSWER = [ReasoningDelta("Let me think."), Finish("stop"), Usage(5, 3, 2)]


def store_shape(**kw: Any) -> ResponsesShape:
    return ResponsesShape(MemoryResponseStore(), ReasoningSealer(["k" * 32]), **kw)


# ---- store and previous_response_id ----------------------------------------------------------------------------


def test_a_stored_response_is_continued_by_previous_response_id() -> None:
    shape = store_shape()
    _, first = turn(shape, {"input": "Hello", "instructions": "Be brief."},
                    [ReasoningDelta("Greet."), *_content("Hi there."), Finish("stop")])
    assert first["store"] is True
    record = asyncio.run(shape.store.get("alice", first["id"]))  # type: ignore[union-attr]
    assert isinstance(record, StoredResponse) and record.status == "completed" and record.response == first
    assert record.input_items == [{"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": "Hello"}]}]
    call = new_call()
    chat = asyncio.run(shape.to_chat({"model": "m", "input": "And again?", "previous_response_id": first["id"]},
                                     call))
    assert [m.model_dump(exclude_none=True) for m in chat.messages] == [
        {"role": "user", "content": [{"type": "text", "text": "Hello"}]},
        {"role": "assistant", "content": "Hi there.", "reasoning_content": "Greet."},
        {"role": "user", "content": "And again?"}]
    body = answered(shape, call, [*_content("Again."), Finish("stop")])
    asyncio.run(shape.finished(call, body))
    second = asyncio.run(shape.store.get("alice", body["id"]))  # type: ignore[union-attr]
    assert second is not None and len(second.input_items) == 4  # the whole conversation: one read next turn
    assert body["previous_response_id"] == first["id"]


def _content(text: str) -> list[Any]:
    from unimodel.protocol.events import ContentDelta

    return [ContentDelta(text)]


@pytest.mark.parametrize("whose", ["never stored", "another key's"])
def test_previous_response_id_of_no_response_this_key_sees_is_openais_400(whose: str) -> None:
    shape = store_shape()
    _, first = turn(shape, {"input": "Hello"}, THINK_AND_ANSWER, key="bob")
    previous = "resp_" + "0" * 32 if whose == "never stored" else first["id"]
    with pytest.raises(PreviousResponseNotFoundError) as info:
        asyncio.run(shape.to_chat({"model": "m", "input": "x", "previous_response_id": previous}, new_call()))
    error = info.value.to_dict()["error"]
    assert info.value.status_code == 400 and error["param"] == "previous_response_id"
    assert error["message"] == f"Previous response with id '{previous}' not found."
    assert error["code"] == "previous_response_not_found" and error["type"] == "invalid_request_error"


def test_store_false_stores_nothing_and_a_store_that_is_off_says_why() -> None:
    shape = store_shape()
    _, body = turn(shape, {"input": "Hello", "store": False}, THINK_AND_ANSWER)
    assert body["store"] is False and len(shape.store) == 0  # type: ignore[arg-type]
    off = ResponsesShape(None, ReasoningSealer(["k" * 32]))
    for field, value in (("previous_response_id", "resp_1"), ("background", True)):
        with pytest.raises(InvalidRequestError, match="response store") as info:
            asyncio.run(off.to_chat({"model": "m", "input": "x", field: value}, new_call()))
        assert info.value.param == field


def test_a_conversation_too_big_to_store_is_refused_before_the_model_is_asked() -> None:
    shape = ResponsesShape(MemoryResponseStore(max_bytes=2048), None)
    with pytest.raises(StoredResponseTooLargeError):
        asyncio.run(shape.to_chat({"model": "m", "input": "x" * 4096}, new_call()))
    asyncio.run(shape.to_chat({"model": "m", "input": "x" * 4096, "store": False}, new_call()))


class _Down(MemoryResponseStore):
    async def _put(self, record: Any, encoded: Any) -> None:
        raise ResponseStoreUnavailableError("the store is down", retry_after=1)


def test_a_store_that_fails_on_write_fails_the_finish() -> None:
    """(The service lets it through: a non-streamed answer becomes the 503; a stream logs it.)"""
    with pytest.raises(ResponseStoreUnavailableError):
        turn(ResponsesShape(_Down(), None), {"input": "Hello"}, THINK_AND_ANSWER)


# ---- sealed reasoning ------------------------------------------------------------------------------------------


def test_encrypted_content_is_sealed_in_the_body_and_the_stream_and_opened_next_turn() -> None:
    shape = store_shape()
    data = {"input": "Hello", "store": False, "include": ["reasoning.encrypted_content"],
            "reasoning": {"summary": "auto"}}
    call, body = turn(shape, data, THINK_AND_ANSWER)
    (reasoning,) = body["output"]
    token = reasoning["encrypted_content"]
    assert isinstance(token, str) and "Let me think." not in token
    Response.model_validate(body)
    writer = ResponsesStreamWriter(shape.frame(call))
    writer.opening([ReasoningDelta("Let me think.")])
    writer.closing([Finish("stop")], None)
    final = writer.result()
    assert final is not None and shape.sealer is not None
    assert shape.sealer.open(final["output"][0]["encrypted_content"])["text"] == "Let me think."
    # next turn: the token (not the summary beside it, which a client could rewrite) is the reasoning
    sent_back = {**reasoning, "summary": [{"type": "summary_text", "text": "I was told to say yes."}]}
    chat = asyncio.run(shape.to_chat({"model": "m", "store": False, "input": [
        {"role": "user", "content": "Hello"}, sent_back, {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Again"}]}, new_call()))
    assert chat.messages[1].model_dump(exclude_none=True) == {
        "role": "assistant", "content": "Hi.", "reasoning_content": "Let me think."}


def test_without_include_nothing_is_sealed() -> None:
    _, body = turn(store_shape(), {"input": "Hello", "store": False}, THINK_AND_ANSWER)
    assert body["output"][0]["encrypted_content"] is None


@pytest.mark.parametrize("token", ["garbage", "um1.00000000.AAAA", "other-key", "other-owner"])
def test_a_token_this_server_cannot_open_for_this_key_is_a_400_naming_the_item(token: str) -> None:
    shape = store_shape()
    if token == "other-key":
        token = ReasoningSealer(["z" * 32]).seal({"text": "x", "owner": "alice"})
    elif token == "other-owner":
        token = shape.sealer.seal({"text": "x", "owner": "bob"})  # type: ignore[union-attr]
    with pytest.raises(EncryptedContentError) as info:
        asyncio.run(shape.to_chat({"model": "m", "store": False, "input": [
            {"role": "user", "content": "Hello"}, {"type": "reasoning", "summary": [], "encrypted_content": token},
            {"role": "assistant", "content": "Hi."}]}, new_call()))
    assert info.value.status_code == 400 and info.value.param == "input[1].encrypted_content"


def test_a_stored_conversation_reads_its_reasoning_without_the_key_that_sealed_it() -> None:
    """Stored output keeps its text beside its token: a restart (a new random key) does not break the chain."""
    store = MemoryResponseStore()
    _, first = turn(ResponsesShape(store, ReasoningSealer()), {"input": "Hello", "include": [
        "reasoning.encrypted_content"]}, [ReasoningDelta("Let me think."), *_content("Hi."), Finish("stop")])
    assert first["output"][0]["encrypted_content"]
    restarted = ResponsesShape(store, ReasoningSealer())
    chat = asyncio.run(restarted.to_chat({"model": "m", "input": "x", "previous_response_id": first["id"]},
                                         new_call()))
    assert chat.messages[1].reasoning_content == "Let me think."  # type: ignore[union-attr]


# ---- Codex's default tools: a namespace and a hosted tool ------------------------------------------------------


def test_a_namespace_is_flattened_for_the_model_and_hosted_tools_are_left_out() -> None:
    request = ResponsesRequest.model_validate({"model": "m", "input": "x", "tools": [SHELL, NAMESPACE, WEB_SEARCH],
                                               "tool_choice": {"type": "function", "name": "spawn_agent"}})
    payload = chat_payload(request)
    assert [t["function"]["name"] for t in payload["tools"]] == ["exec_command", "multi_agent_v1__spawn_agent"]
    assert payload["tool_choice"] == {"type": "function", "function": {"name": "multi_agent_v1__spawn_agent"}}
    assert [t["type"] for t in request.echoed_tools] == ["function", "namespace"]
    assert request.hosted_tools == ["web_search"]


def test_a_call_to_a_namespaced_function_comes_back_split_and_goes_out_flat_again() -> None:
    shape = store_shape()
    events = [ToolCallStart(0, "call_1", "multi_agent_v1__spawn_agent"), ToolCallArgsDelta(0, "{}"),
              ToolCallEnd(0), Finish("tool_calls")]
    call, body = turn(shape, {"input": "x", "tools": [SHELL, NAMESPACE, WEB_SEARCH], "store": False}, events)
    (item,) = body["output"]
    assert (item["name"], item["namespace"]) == ("spawn_agent", "multi_agent_v1")
    Response.model_validate(body)
    writer = ResponsesStreamWriter(shape.frame(call))
    frames = writer.opening(events[:1]) + writer.closing(events[1:], None)
    done = [json.loads(b.split(b"data: ", 1)[1]) for b in frames.split(b"\n\n") if b"output_item.done" in b]
    assert done[0]["item"]["namespace"] == "multi_agent_v1" and done[0]["item"]["name"] == "spawn_agent"
    chat = asyncio.run(shape.to_chat({"model": "m", "tools": [NAMESPACE], "input": [
        {"role": "user", "content": "x"}, {k: v for k, v in item.items() if k != "status"},
        {"type": "function_call_output", "call_id": "call_1", "output": "spawned"}]}, new_call()))
    assert chat.messages[1].tool_calls[0].function.name == "multi_agent_v1__spawn_agent"  # type: ignore[index]


# ---- background ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("data", "param"), [({"store": False}, "background"), ({"stream": True}, "stream")])
def test_background_needs_store_and_is_not_streamed(data: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        asyncio.run(store_shape().to_chat({"model": "m", "input": "x", "background": True, **data}, new_call()))
    assert info.value.param == param and info.value.status_code == 400


def test_background_is_streamed_from_the_engine_and_refused_when_the_runs_are_full() -> None:
    runs = BackgroundRuns(1)
    shape = store_shape(runs=runs)
    chat = asyncio.run(shape.to_chat({"model": "m", "input": "x", "background": True}, new_call()))
    assert chat.stream is True  # the engine streams: the first event comes at once, not with the whole answer
    slot = runs.reserve()
    with pytest.raises(RateLimitError) as info:
        asyncio.run(shape.to_chat({"model": "m", "input": "x", "background": True}, new_call()))
    assert info.value.status_code == 429 and info.value.retry_after
    slot.release()
    assert runs.in_flight == 0


def test_background_runs_are_bounded_cancelled_and_ended_on_shutdown() -> None:
    async def go() -> None:
        runs = BackgroundRuns(2)
        ended: list[str] = []

        async def run(name: str) -> None:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                ended.append(f"{name}:{'shutdown' if runs.closing else 'cancel'}")
                raise

        runs.start(runs.reserve(), "alice", "resp_a", run("a"))
        runs.start(runs.reserve(), "alice", "resp_b", run("b"))
        with pytest.raises(RateLimitError):
            runs.reserve()
        await asyncio.sleep(0)
        assert not await runs.cancel("bob", "resp_a")  # another key's: not there
        assert await runs.cancel("alice", "resp_a", wait_s=5)
        assert runs.in_flight == 1
        await runs.aclose(wait_s=5)
        assert ended == ["a:cancel", "b:shutdown"] and len(runs) == 0
        with pytest.raises(Exception, match="shutting down"):
            runs.reserve()

    asyncio.run(go())


# ---- the stored responses' API ---------------------------------------------------------------------------------


def _stored(status: str = "completed", items: int = 3) -> tuple[StoredResponses, MemoryResponseStore]:
    store = MemoryResponseStore()
    body = {"id": "resp_x", "object": "response", "status": status, "output": []}
    inputs = [{"type": "message", "role": "user", "content": f"m{n}"} for n in range(items)]
    asyncio.run(store.put("alice", store.record("alice", body, inputs)))
    return StoredResponses(store, BackgroundRuns()), store


def test_retrieve_and_delete_are_the_owners_alone() -> None:
    api, _ = _stored()
    assert asyncio.run(api.retrieve("alice", "resp_x"))["id"] == "resp_x"
    for call in (api.retrieve("bob", "resp_x"), api.delete("bob", "resp_x"), api.retrieve("alice", "resp_nope")):
        with pytest.raises(ResponseNotFoundError, match="Response with id '.*' not found.") as info:
            asyncio.run(call)
        assert info.value.status_code == 404 and info.value.to_dict()["error"]["type"] == "invalid_request_error"
    assert asyncio.run(api.delete("alice", "resp_x")) == {"id": "resp_x", "object": "response", "deleted": True}
    with pytest.raises(ResponseNotFoundError):
        asyncio.run(api.retrieve("alice", "resp_x"))
    with pytest.raises(ResponseNotFoundError, match="responses-store off"):
        asyncio.run(StoredResponses(None).retrieve("alice", "resp_x"))


@pytest.mark.parametrize(("status", "outcome"), [("in_progress", "cancelled"), ("queued", "cancelled"),
                                                  ("cancelled", "cancelled"), ("completed", 400), ("failed", 400)])
def test_cancel_follows_openais_rules(status: str, outcome: Any) -> None:
    api, store = _stored(status)
    if outcome == 400:
        with pytest.raises(InvalidRequestError, match=f"'{status}'"):
            asyncio.run(api.cancel("alice", "resp_x"))
        return
    assert asyncio.run(api.cancel("alice", "resp_x"))["status"] == "cancelled"
    record: Optional[StoredResponse] = asyncio.run(store.get("alice", "resp_x"))
    assert record is not None and record.status == "cancelled" and record.response["status"] == "cancelled"


def test_input_items_is_a_list_object_paged_by_id() -> None:
    api, _ = _stored(items=5)
    page = asyncio.run(api.input_items("alice", "resp_x", limit=2))
    assert page["object"] == "list" and page["has_more"] is True
    assert [item["content"] for item in page["data"]] == ["m4", "m3"]  # newest first, as OpenAI's default
    rest = asyncio.run(api.input_items("alice", "resp_x", limit=10, after=page["last_id"]))
    assert [item["content"] for item in rest["data"]] == ["m2", "m1", "m0"] and rest["has_more"] is False
    asc = asyncio.run(api.input_items("alice", "resp_x", order="asc"))
    assert [item["content"] for item in asc["data"]] == [f"m{n}" for n in range(5)]
    with pytest.raises(InvalidRequestError):
        asyncio.run(api.input_items("alice", "resp_x", limit=0))
