"""Assistant prefill (Mistral's ``prefix: true``, vLLM's ``continue_final_message``) on every engine.

Validation turns either spelling into ``GenerationRequest.continue_final_message`` (or a 400); the local
engine continues the message; the upstream engine passes it on (``prefix`` on the message for Mistral-style
APIs, ``continue_final_message``/``add_generation_prompt`` for vLLM and SGLang).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.contract.conftest import Served
from tests.support.requests import gen_request
from tests.support.scripted_upstream import ScriptedUpstream
from unimodel.engines.upstream import UpstreamEngine
from unimodel.errors import InvalidRequestError, UnsupportedFeatureError
from unimodel.protocol.openai import ChatCompletionRequest, ModelCard
from unimodel.service.validate import to_generation_request

USER = {"role": "user", "content": "Tell me a story."}
PREFILL = {"role": "assistant", "content": "Once upon a time"}
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


def validate(messages: list[dict[str, Any]], **wire: Any) -> bool:
    body = ChatCompletionRequest.model_validate({"model": "m", "messages": messages, **wire})
    return to_generation_request(body, [ModelCard(id="m")]).continue_final_message


def test_either_spelling_asks_for_a_continuation() -> None:
    assert validate([USER, {**PREFILL, "prefix": True}])
    assert validate([USER, PREFILL], continue_final_message=True)
    assert validate([USER, {**PREFILL, "prefix": True}], continue_final_message=True)
    assert not validate([USER, PREFILL]) and not validate([USER, {**PREFILL, "prefix": False}])
    assert not validate([USER], continue_final_message=False)


@pytest.mark.parametrize(("messages", "wire", "param"), [
    ([{**USER, "prefix": True}, PREFILL], {}, "messages"),  # prefix on a message that is not the last
    ([USER, {**PREFILL, "prefix": True}], {"continue_final_message": False}, "continue_final_message"),
    ([USER], {"continue_final_message": True}, "continue_final_message"),  # nothing to continue
    ([USER, {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]}],
     {"continue_final_message": True}, "continue_final_message"),
    ([USER, {**PREFILL, "prefix": True}], {"response_format": {"type": "json_object"}}, "response_format"),
    ([USER, {**PREFILL, "prefix": True}], {"tools": TOOLS, "tool_choice": "required"}, "tool_choice"),
])
def test_refused_prefills_are_400s(messages: list[dict[str, Any]], wire: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        validate(messages, **wire)
    assert err.value.status_code == 400 and err.value.param == param
    if param in ("response_format", "tool_choice"):
        assert isinstance(err.value, UnsupportedFeatureError)


@pytest.mark.parametrize("parse_mode", ["auto", "upstream"])
def test_the_upstream_payload_carries_the_prefill(parse_mode: Any) -> None:
    engine = UpstreamEngine("http://upstream.invalid/v1", served_model_name="m", parse_mode=parse_mode)
    request = gen_request("r", "m", {"model": "m", "messages": [USER, PREFILL], "continue_final_message": True})
    payload = engine.build_payload(request)
    assert payload["continue_final_message"] is True and payload["add_generation_prompt"] is False
    assert payload["messages"][-1] == {**PREFILL, "prefix": True} and len(payload["messages"]) == 2
    plain = engine.build_payload(gen_request("r", "m", {"model": "m", "messages": [USER]}))
    assert "continue_final_message" not in plain and "prefix" not in plain["messages"][-1]


def test_a_budget_continuation_extends_the_prefill_rather_than_adding_a_turn() -> None:
    engine = UpstreamEngine("http://upstream.invalid/v1", served_model_name="m", family="think-tags")
    request = gen_request("r", "m", {"model": "m", "messages": [USER, {**PREFILL, "prefix": True}]})
    payload = engine.build_payload(request, continue_from=engine.format.closed_thinking_message("hmm"))
    assert len(payload["messages"]) == 2 and payload["continue_final_message"] is True
    assert payload["messages"][-1]["content"] == "Once upon a time<think>\nhmm\n</think>\n\n"


def _post(served: Served, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(served.base_url + "/chat/completions", json={"model": served.model, **body}, timeout=120)


def test_every_engine_continues_a_prefill(served: Served, scripted_upstream: ScriptedUpstream) -> None:
    before = len(scripted_upstream.requests)
    resp = _post(served, {"messages": [USER, {**PREFILL, "prefix": True}], "max_tokens": 6})
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] in ("stop", "length") and choice["message"]["role"] == "assistant"
    if served.kind == "upstream":
        sent = scripted_upstream.requests[before:]
        assert sent and sent[-1]["continue_final_message"] is True and sent[-1]["messages"][-1]["prefix"] is True
    refused = _post(served, {"messages": [{**USER, "prefix": True}, PREFILL], "max_tokens": 6})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages"
