"""``POST /v1/messages`` with the official ``anthropic`` SDK over real HTTP: a live unimodel in front of the
scripted upstream (text, thinking, tools, a failure mid-stream, errors, keys), the embedded engine on the
``tiny-scripted`` checkpoint (real reasoning and calls from a real model), and one key's requests per minute
counted across ``/v1/chat/completions`` and ``/v1/messages``."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import ANSWER, REASONING
from tests.support.live_server import LiveServer
from tests.support.scripted_upstream import ScriptedUpstream
from unimodel import keys_cli
from unimodel.compose import build_engine
from unimodel.config import Settings
from unimodel.models.scripted import script

KEY = "sk-messages-test"
HI: Any = [{"role": "user", "content": "What is 2+2?"}]
TOOLS: Any = [{"name": "get_weather", "description": "The weather in a city.",
               "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
              {"name": "get_time", "input_schema": {"type": "object", "properties": {"tz": {"type": "string"}}}}]


def _root(server: LiveServer) -> str:
    return server.base_url.removesuffix("/v1")  # the SDK's base URL has no /v1 (nor does ANTHROPIC_BASE_URL)


def _client(server: LiveServer, **auth: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=_root(server), max_retries=0, timeout=60, **({"api_key": KEY} | auth))


@pytest.fixture(scope="module")
def gateway(scripted_upstream: ScriptedUpstream) -> Iterator[LiveServer]:
    settings = Settings(engine="upstream", upstream=scripted_upstream.base_url, upstream_connect_timeout_s=1.0,
                        api_keys=[KEY])
    with LiveServer(settings, build_engine(settings)) as server:
        yield server


@pytest.fixture
def client(gateway: LiveServer) -> Iterator[anthropic.Anthropic]:
    with _client(gateway) as c:
        yield c


def _same_message(a: anthropic.types.Message, b: anthropic.types.Message) -> None:
    """Equal but for the id (two requests) and the tool calls' ids (the engine makes them)."""
    def strip(m: anthropic.types.Message) -> dict[str, Any]:
        d = m.model_dump(exclude={"id"})
        for block in d["content"]:
            block.pop("id", None)
        return d
    assert strip(a) == strip(b)


# ---- the scripted upstream --------------------------------------------------------------------------------


def test_create_and_stream_give_the_same_message(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(model="raw-think", max_tokens=200, messages=HI)
    whole = raw.parse()
    assert re.fullmatch(r"msg_[0-9a-f]{32}", whole.id) and whole.type == "message" and whole.role == "assistant"
    assert [b.type for b in whole.content] == ["thinking", "text"]
    assert whole.content[0].thinking == REASONING and whole.content[0].signature  # type: ignore[union-attr]
    assert whole.content[1].text == ANSWER  # type: ignore[union-attr]
    assert (whole.stop_reason, whole.stop_sequence, whole.model) == ("end_turn", None, "raw-think")
    assert whole.usage.input_tokens == 11 and whole.usage.output_tokens > 0
    assert whole.usage.cache_read_input_tokens == 0
    assert raw.headers["x-unimodel-route"] == "default"

    kinds: list[str] = []
    with client.messages.stream(model="raw-think", max_tokens=200, messages=HI) as stream:
        for event in stream:
            kinds.append(event.type)
        text = "".join(b.text for b in stream.current_message_snapshot.content if b.type == "text")
        streamed = stream.get_final_message()
    assert text == ANSWER
    _same_message(streamed, whole)
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "message_delta" in kinds
    assert {"thinking", "signature", "text", "content_block_start", "content_block_stop"} <= set(kinds)


def test_the_query_string_plays_no_part(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model="raw-plain", max_tokens=50, messages=HI, extra_query={"beta": "true"})
    assert message.content[0].text == ANSWER  # type: ignore[union-attr]


def test_a_tool_round_trip(client: anthropic.Anthropic, scripted_upstream: ScriptedUpstream) -> None:
    first = client.messages.create(model="parsed-tools", max_tokens=200, messages=HI, tools=TOOLS,
                                   tool_choice={"type": "auto"})
    assert first.stop_reason == "tool_use"
    calls = [b for b in first.content if b.type == "tool_use"]
    assert [(c.name, c.input) for c in calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}),
        ("get_time", {"tz": "Europe/Paris", "note": 'a } and a "quote"'})]
    with client.messages.stream(model="parsed-tools", max_tokens=200, messages=HI, tools=TOOLS) as stream:
        _same_message(stream.get_final_message(), first)

    follow_up: Any = [*HI, {"role": "assistant", "content": first.content}, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": calls[0].id, "content": "18 °C"},
        {"type": "tool_result", "tool_use_id": calls[1].id, "content": [{"type": "text", "text": "14:00"}]},
        {"type": "text", "text": "And so?"}]}]
    second = client.messages.create(model="raw-plain", max_tokens=200, messages=follow_up, tools=TOOLS)
    assert second.content[0].text == ANSWER and second.stop_reason == "end_turn"  # type: ignore[union-attr]
    sent = scripted_upstream.requests[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool", "user"]
    assert [(c["id"], c["function"]["name"]) for c in sent[1]["tool_calls"]] == [
        (calls[0].id, "get_weather"), (calls[1].id, "get_time")]
    assert '"city": "Paris"' in sent[1]["tool_calls"][0]["function"]["arguments"]
    assert (sent[2]["tool_call_id"], sent[2]["content"]) == (calls[0].id, "18 °C")
    assert (sent[3]["tool_call_id"], sent[3]["content"]) == (calls[1].id, "14:00")
    assert sent[4]["content"] == "And so?"


def test_thinking_asks_for_reasoning_with_the_budget(client: anthropic.Anthropic) -> None:
    raw = client.messages.with_raw_response.create(model="raw-think", max_tokens=4000, messages=HI,
                                                   thinking={"type": "enabled", "budget_tokens": 2048})
    assert "effort=low" in raw.headers["x-unimodel-reasoning"] and "budget=2048" in raw.headers["x-unimodel-reasoning"]
    assert "charged_effort=medium" in raw.headers["x-unimodel-reasoning"]  # the budget is medium's work
    raw = client.messages.with_raw_response.create(model="raw-plain", max_tokens=50, messages=HI,
                                                   thinking={"type": "disabled"})
    assert "effort=none" in raw.headers["x-unimodel-reasoning"]


def test_an_image_goes_through_the_image_stage(client: anthropic.Anthropic,
                                               scripted_upstream: ScriptedUpstream) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    client.messages.create(model="raw-plain", max_tokens=50, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}},
        {"type": "text", "text": "What colour?"}]}])
    parts = scripted_upstream.requests[-1]["messages"][0]["content"]
    assert parts[0]["type"] == "image_url" and parts[0]["image_url"]["url"].startswith("data:image/")
    with pytest.raises(anthropic.BadRequestError):  # not an image: the image stage refuses it, as for chat
        client.messages.create(model="raw-plain", max_tokens=50, messages=[{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "bm90IGFuIGltYWdl"}}]}])


def test_a_failure_mid_stream_is_an_error_event(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.APIStatusError) as failed:
        with client.messages.stream(model="error-frame", max_tokens=500, messages=HI) as stream:
            for _ in stream:
                pass
    body: Any = failed.value.body
    assert body["type"] == "error" and body["error"]["type"] in ("api_error", "overloaded_error")


def test_errors_are_anthropics(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model="raw-plain", messages=HI, max_tokens=anthropic.NOT_GIVEN)  # type: ignore
    assert bad.value.body == {"type": "error", "error": {"type": "invalid_request_error",
                                                         "message": "Invalid request: 'max_tokens': Field required"}}
    with pytest.raises(anthropic.BadRequestError, match="server tools"):
        client.messages.create(model="raw-plain", max_tokens=50, messages=HI,
                               tools=[{"type": "web_search_20250305", "name": "web_search"}])
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model", max_tokens=50, messages=HI)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    with pytest.raises(anthropic.BadRequestError) as upstream_said:  # an upstream's 400, in Anthropic's body
        client.messages.create(model="fails-400", max_tokens=50, messages=HI)
    assert "maximum context length" in upstream_said.value.body["error"]["message"]  # type: ignore[index]


def test_the_key_as_x_api_key_or_bearer(gateway: LiveServer) -> None:
    with _client(gateway) as by_x_api_key:  # the SDK's api_key is sent as x-api-key
        assert by_x_api_key.messages.create(model="raw-plain", max_tokens=20, messages=HI).content
    with _client(gateway, api_key=None, auth_token=KEY) as by_bearer:  # Claude Code's ANTHROPIC_AUTH_TOKEN
        assert by_bearer.messages.create(model="raw-plain", max_tokens=20, messages=HI).content
    with _client(gateway, api_key="sk-wrong") as stranger, pytest.raises(anthropic.AuthenticationError) as refused:
        stranger.messages.create(model="raw-plain", max_tokens=20, messages=HI)
    assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


def test_one_keys_rpm_counts_chat_and_messages_together(tmp_path: Path,
                                                        scripted_upstream: ScriptedUpstream) -> None:
    made = CliRunner().invoke(keys_cli.keys_app, ["create", "team-rpm", "--rpm", "2"])
    assert made.exit_code == 0, made.stderr
    secret = re.findall(r"sk-um-[A-Za-z0-9_-]{43}", made.stdout)[0]
    cfg = tmp_path / "unimodel.yaml"
    cfg.write_text(made.stdout[made.stdout.index("keys:\n"):])
    settings = Settings.load(cfg, engine="upstream", upstream=scripted_upstream.base_url,
                             upstream_connect_timeout_s=1.0)
    with LiveServer(settings, build_engine(settings)) as server, \
            openai.OpenAI(base_url=server.base_url, api_key=secret, max_retries=0, timeout=20) as chat, \
            _client(server, api_key=secret) as messages:
        chat.chat.completions.create(model="raw-plain", messages=HI)
        messages.messages.create(model="raw-plain", max_tokens=20, messages=HI)
        with pytest.raises(anthropic.RateLimitError) as limited:  # the third request of the minute, either shape
            messages.messages.create(model="raw-plain", max_tokens=20, messages=HI)
        assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert limited.value.response.headers.get("retry-after")
        with pytest.raises(openai.RateLimitError):
            chat.chat.completions.create(model="raw-plain", messages=HI)


# ---- the embedded engine on tiny-scripted: a real model's reasoning and calls ----------------------------


@pytest.fixture(scope="module")
def scripted_model(scripted_checkpoint: Path) -> Iterator[anthropic.Anthropic]:
    settings = Settings(engine="local", model=str(scripted_checkpoint), served_model_name="tiny-scripted",
                        device="cpu", dtype="float32", max_num_seqs=4)
    with LiveServer(settings, build_engine(settings)) as server, \
            anthropic.Anthropic(base_url=_root(server), api_key="unused", max_retries=0, timeout=120) as c:
        yield c


@pytest.mark.slow
@pytest.mark.parametrize("name, blocks", [
    ("think", [("thinking", "Let me think about it."), ("text", "Sunny and mild today")]),
    ("tool", [("tool_use", ("get_weather", {"city": "Berlin"}))]),
    ("think_tool", [("thinking", "I should call a tool."), ("tool_use", ("lookup", {"q": "news"}))]),
])
def test_the_scripted_model_thinks_and_calls(scripted_model: anthropic.Anthropic, name: str,
                                             blocks: list[tuple[str, Any]]) -> None:
    tools: Any = [*TOOLS, {"name": "lookup", "input_schema": {"type": "object"}}]
    ask: Any = {"model": "tiny-scripted", "max_tokens": 64, "tools": tools,
                "messages": [{"role": "user", "content": script(name).prompt}],
                "thinking": {"type": "enabled", "budget_tokens": 1024}, "extra_body": {"temperature": 0}}
    whole = scripted_model.messages.create(**ask)

    def shown(block: Any) -> tuple[str, Any]:
        return (block.type, {"thinking": lambda: block.thinking, "text": lambda: block.text,
                             "tool_use": lambda: (block.name, block.input)}[block.type]())
    assert [shown(b) for b in whole.content] == blocks
    assert whole.stop_reason == ("tool_use" if blocks[-1][0] == "tool_use" else "end_turn")
    assert whole.usage.input_tokens > 0 and whole.usage.output_tokens > 0
    with scripted_model.messages.stream(**ask) as stream:
        _same_message(stream.get_final_message(), whole)
