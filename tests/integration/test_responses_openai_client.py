"""``POST /v1/responses`` with the official openai SDK (``responses.create``, ``responses.stream``) and an
``openai-agents`` Runner, against a real uvicorn unimodel: on the local engine serving ``tiny-scripted`` (its
greedy output is a script the prompt picks: real reasoning and tool calls from a real model), and in front of
the scripted upstream (an answer that depends on the request, for tool round trips, and a stream that breaks)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import ANSWER
from tests.support.live_server import LiveServer
from tests.support.scripted_upstream import Script, ScriptedUpstream
from unimodel.compose import build_engine
from unimodel.config import Settings

pytestmark = pytest.mark.slow

TOOLS = [{"type": "function", "name": "get_weather", "description": "The weather in a city.",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
         {"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
THINK = "Follow the script of Rome."  # tiny-scripted: "[THINK]Let me think about it.[/THINK]Sunny and mild today"
TOOL = "Follow the script of Madrid."  # '[TOOL_CALLS]get_weather[ARGS]{"city": "Berlin"}'
THINK_TOOL = "Follow the script of Tokyo."  # '[THINK]I should call a tool.[/THINK][TOOL_CALLS]lookup[ARGS]{…}'


def weather_agent(body: dict[str, Any]) -> Script:
    """Calls get_weather for Berlin; once the conversation holds the tool's result, answers with it."""
    results = [m["content"] for m in body["messages"] if m["role"] == "tool"]
    if results:
        return Script(mode="parsed", content=f"The tool says: {results[-1]}")
    return Script(mode="parsed", reasoning="I need the weather.", tool_calls=[("get_weather", '{"city": "Berlin"}')])


@pytest.fixture(scope="module")
def upstream() -> Iterator[ScriptedUpstream]:
    scripts = {"weather": Script(respond=weather_agent),
               "breaks": Script(mode="parsed", content=ANSWER * 4, error_frame_after=4)}
    with ScriptedUpstream(scripts) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(upstream: ScriptedUpstream) -> Iterator[LiveServer]:
    settings = Settings(engine="upstream", upstream=upstream.base_url, upstream_connect_timeout_s=2.0)
    with LiveServer(settings, build_engine(settings)) as server:
        yield server


@pytest.fixture(scope="module")
def local(scripted_checkpoint: Path, tiny_cache_dir: Path) -> Iterator[openai.OpenAI]:
    settings = Settings(engine="local", model="tiny-scripted", cache_dir=tiny_cache_dir, device="cpu",
                        dtype="float32", max_num_seqs=4)
    with LiveServer(settings, build_engine(settings)) as server, \
            openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def client(gateway: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0, timeout=30) as client:
        yield client


def _comparable(response: Any) -> dict[str, Any]:
    """A Response without what differs between two requests (its ids and times)."""
    data = response.model_dump(mode="json")
    for key in ("id", "created_at", "completed_at"):
        data.pop(key)
    for item in data["output"]:
        item.pop("id")
        item.pop("call_id", None)
        item.pop("parsed_arguments", None)  # what the SDK's stream helper adds of its own
        for part in item.get("content") or ():
            part.pop("parsed", None)
    return data


def _stream(client: openai.OpenAI, **request: Any) -> tuple[list[Any], Any]:
    with client.responses.stream(**request) as stream:
        events = list(stream)
        final = stream.get_final_response()
    return events, final


# ---- the local engine: a real model's reasoning and calls --------------------------------------------------


def test_create_answers_with_a_reasoning_item_and_a_message(local: openai.OpenAI) -> None:
    response = local.responses.create(model="tiny-scripted", input=THINK, instructions="Be brief.",
                                      reasoning={"effort": "high"}, metadata={"ticket": "42"})
    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    assert [item.type for item in response.output] == ["reasoning", "message"]
    reasoning, message = response.output
    assert reasoning.id.startswith("rs_") and message.id.startswith("msg_")
    assert [c.text for c in reasoning.content or []] == ["Let me think about it."]  # type: ignore[union-attr]
    assert response.output_text == "Sunny and mild today"
    assert message.status == "completed" and message.role == "assistant"  # type: ignore[union-attr]
    usage = response.usage
    assert usage is not None and usage.output_tokens_details.reasoning_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert response.instructions == "Be brief." and response.metadata == {"ticket": "42"}
    assert response.reasoning is not None and response.reasoning.effort == "high" and response.error is None


def test_a_tool_call_is_a_function_call_item(local: openai.OpenAI) -> None:
    response = local.responses.create(model="tiny-scripted", input=TOOL, tools=TOOLS)  # type: ignore[arg-type]
    assert [item.type for item in response.output] == ["function_call"]
    call = response.output[0]
    assert call.id.startswith("fc_") and call.call_id and call.status == "completed"  # type: ignore[union-attr]
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Berlin"})  # type: ignore[union-attr]


@pytest.mark.parametrize("prompt", [THINK, THINK_TOOL])
def test_the_stream_folds_to_the_response_create_gives(local: openai.OpenAI, prompt: str) -> None:
    request: dict[str, Any] = {"model": "tiny-scripted", "input": prompt, "tools": TOOLS,
                               "reasoning": {"effort": "high"}}
    whole = local.responses.create(**request)
    events, final = _stream(local, **request)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "response.reasoning_text.delta" in kinds
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole.output_text
    assert _comparable(final) == _comparable(whole)
    # the stream's ids are the final response's
    assert {e.response.id for e in events if hasattr(e, "response")} == {final.id}
    added = [(e.output_index, e.item.id) for e in events if e.type == "response.output_item.added"]
    assert added == [(i, item.id) for i, item in enumerate(final.output)]
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert item_ids <= {item.id for item in final.output}
    if prompt == THINK_TOOL:
        assert "response.function_call_arguments.delta" in kinds
        assert [item.type for item in final.output] == ["reasoning", "function_call"]


def test_an_answer_cut_at_max_output_tokens_is_incomplete(local: openai.OpenAI) -> None:
    whole = local.responses.create(model="tiny-scripted", input=THINK, reasoning={"effort": "high"},
                                   max_output_tokens=4)
    assert whole.status == "incomplete" and whole.incomplete_details is not None
    assert whole.incomplete_details.reason == "max_output_tokens" and whole.max_output_tokens == 4
    assert whole.output[-1].status == "incomplete"  # type: ignore[union-attr]
    events = list(local.responses.create(model="tiny-scripted", input=THINK, reasoning={"effort": "high"},
                                         max_output_tokens=4, stream=True))
    assert events[-1].type == "response.incomplete"
    assert _comparable(events[-1].response) == _comparable(whole)


# ---- in front of the scripted upstream: tool round trips, errors ----------------------------------------------


def test_a_function_tool_round_trip(client: openai.OpenAI, upstream: ScriptedUpstream) -> None:
    question = [{"role": "user", "content": "What is the weather in Berlin?"}]
    first = client.responses.create(model="weather", input=question, tools=TOOLS)  # type: ignore[arg-type]
    assert [item.type for item in first.output] == ["reasoning", "function_call"]
    call = first.output[1]
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Berlin"})  # type: ignore[union-attr]
    # the client runs the tool and sends the whole conversation back, the model's own items included
    history = [*question, *(item.model_dump(exclude_none=True) for item in first.output),
               {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 °C"}]  # type: ignore[union-attr]
    second = client.responses.create(model="weather", input=history, tools=TOOLS)  # type: ignore[arg-type]
    assert second.status == "completed" and second.output_text == "The tool says: sunny, 21 °C"
    sent = upstream.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == call.call_id  # type: ignore[union-attr]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Berlin"}'}
    assert sent[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 21 °C"}  # type: ignore[union-attr]


def test_a_stream_that_breaks_midway_ends_with_response_failed(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="breaks", input="hi", stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.failed"
    failed = events[-1].response
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
    assert failed.output and failed.output[0].status == "incomplete"  # type: ignore[union-attr]


@pytest.mark.parametrize(("request_fields", "param"), [
    ({"input": [{"type": "computer_call_output", "call_id": "c", "output": {}}]}, "input[0]"),
    ({"input": "hi", "tools": [{"type": "custom", "name": "apply_patch"}]}, "tools[0]"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-abc"}]}]},
     "input[0].content[0]"),
    ({"input": "hi", "previous_response_id": "resp_123"}, "previous_response_id"),
    ({"input": "hi", "background": True, "store": False}, "background"),
    ({"input": "hi", "model": "no-such-model"}, "model"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_a_bad_request_is_a_bad_request_error(client: openai.OpenAI, request_fields: dict[str, Any], param: str,
                                              stream: bool) -> None:
    body = {"model": "weather", **request_fields}
    with pytest.raises((openai.BadRequestError, openai.NotFoundError)) as info:
        client.responses.create(**body, stream=stream)  # type: ignore[call-overload]
    error = info.value.body
    assert isinstance(error, dict) and error["param"] == param and error["message"]


def test_an_unknown_tool_type_names_the_type(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model="weather", input="hi", tools=[{"type": "local_shell"}])  # type: ignore[list-item]
    assert "'local_shell'" in info.value.message and info.value.status_code == 400


# ---- the Agents SDK ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True])
async def test_an_agents_sdk_runner_completes_a_tool_round_trip(gateway: LiveServer, streamed: bool) -> None:
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return f"sunny in {city}"

    client = openai.AsyncOpenAI(base_url=gateway.base_url, api_key="x", max_retries=0, timeout=30)
    agent = Agent(name="weather", instructions="Answer with the tool's help.", tools=[get_weather],
                  model=OpenAIResponsesModel(model="weather", openai_client=client))
    try:
        if streamed:
            run = Runner.run_streamed(agent, "What is the weather in Berlin?", max_turns=4)
            kinds = [event.type async for event in run.stream_events()]
            assert "raw_response_event" in kinds
            result: Any = run
        else:
            result = await asyncio.wait_for(Runner.run(agent, "What is the weather in Berlin?", max_turns=4), 60)
    finally:
        await client.close()
    assert asked == ["Berlin"]
    assert result.final_output == "The tool says: sunny in Berlin"
