"""Validation produces a closed type: only typed fields and an operator's allowlist reach an upstream."""

from __future__ import annotations

import pytest

from unimodel.engines.upstream import UpstreamEngine
from unimodel.errors import InvalidRequestError
from unimodel.protocol.openai import ChatCompletionRequest, ModelCard
from unimodel.service.parse import parse_chat_body
from unimodel.service.validate import to_generation_request

MODELS = [ModelCard(id="m", max_model_len=1000)]
BASE = {"model": "m", "messages": [{"role": "user", "content": "hi", "vendor_thing": 1}]}


def wire(**fields: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({**BASE, **fields})


def payload(request_fields: dict[str, object], **kw: object) -> dict[str, object]:
    request = to_generation_request(wire(**request_fields), MODELS, **kw)  # type: ignore[arg-type]
    return UpstreamEngine("http://127.0.0.1:9/v1", served_model_name="m").build_payload(request)


def test_unknown_fields_are_dropped_and_typed_extensions_kept() -> None:
    sent = payload({"top_k": 5, "min_p": 0.1, "min_tokens": 2, "ignore_eos": True, "stop_token_ids": [7],
                    "priority": 3, "kv_transfer_params": {"x": 1}, "chat_template": "t", "temperature": 0.5})
    assert (sent["top_k"], sent["min_p"], sent["min_tokens"], sent["ignore_eos"], sent["stop_token_ids"]) == \
        (5, 0.1, 2, True, [7])
    assert sent["temperature"] == 0.5
    assert not {"priority", "kv_transfer_params", "chat_template"} & set(sent)
    assert sent["messages"] == [{"role": "user", "content": "hi"}]  # nested unknowns ignored too


def test_an_operator_allowlist_forwards_a_field_as_is() -> None:
    sent = payload({"priority": 3, "chat_template": "t"}, upstream_extra_fields=["priority"])
    assert sent["priority"] == 3 and "chat_template" not in sent


def test_reject_mode_names_the_unknown_field() -> None:
    with pytest.raises(InvalidRequestError) as err:
        to_generation_request(wire(kv_transfer_params={}), MODELS, unknown_fields="reject")
    assert err.value.param == "kv_transfer_params" and err.value.code == "unknown_field"
    to_generation_request(wire(top_k=3), MODELS, unknown_fields="reject")  # known extensions pass


def test_default_max_tokens_is_a_fallback_not_a_client_limit() -> None:
    request = to_generation_request(wire(), MODELS, default_max_tokens=5000)
    assert request.max_tokens is None and request.default_max_tokens == 1000  # clamped to the context
    with pytest.raises(InvalidRequestError):
        to_generation_request(wire(max_tokens=5000), MODELS)


@pytest.mark.parametrize("temperature, sent", [(1e-300, 0.0), (0.0, 0.0), (0.7, 0.7)])
def test_tiny_temperatures_are_greedy(temperature: float, sent: float) -> None:
    assert wire(temperature=temperature).temperature == sent


@pytest.mark.parametrize("body, param", [
    (b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}', "messages[0].content"),
    (b'{"model": "m", "messages": [], "x": ' + b"[" * 80 + b"]" * 80 + b"}", "x" + "[0]" * 63),
    (b'{"model": "m", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", None),
])
def test_parse_refuses_what_would_hurt(body: bytes, param: str | None) -> None:
    with pytest.raises(InvalidRequestError) as err:
        parse_chat_body(body)
    assert err.value.param == param


def test_valid_surrogate_pairs_are_fine() -> None:
    assert parse_chat_body(b'{"model": "m", "messages": [{"role": "user", "content": "\\ud83c\\udf89"}]}') \
        .messages[0].content == "🎉"
