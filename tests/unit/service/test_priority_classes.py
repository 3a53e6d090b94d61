"""Priority classes and session affinity as the validate stage fills them into the engine's request: the class a
request runs in (the ``X-Unimodel-Priority`` header, the key's own class, the server's default), its refusals (an
unknown class 400, a class the key may not use 403, both naming the header), the rank forwarded as vLLM's
``priority`` only when the operator says so and never over a client's allowed ``priority``; ``tenant``; the
affinity's order (``prompt_cache_key``, the answer a Responses request continues, ``user``); the key policy's new
fields, the settings and their flags, and ``unimodel keys create``'s options."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Optional

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from tests.unit.shapes.test_responses_state_wiring import THINK_AND_ANSWER, new_call, store_shape, turn
from unimodel import keys_cli
from unimodel.config import Settings
from unimodel.errors import ConfigError, InvalidRequestError, PermissionDeniedError
from unimodel.gateway.keyhash import hash_key
from unimodel.gateway.policy import KeyPolicy
from unimodel.protocol.openai import ChatCompletionRequest, ModelCard
from unimodel.protocol.responses import ResponsesRequest
from unimodel.service.context import Caller, RequestContext
from unimodel.service.pipeline import Call
from unimodel.service.priority import PriorityClasses, affinity_of
from unimodel.service.validate import ValidateStage
from unimodel.shapes.responses.convert import chat_payload

MSG = [{"role": "user", "content": "hi"}]
CLASSES = {"interactive": 0, "batch": 10, "bulk": 20}
BATCH_ONLY = Caller(name="nightly", priority_class="batch", priority_classes=frozenset({"batch", "bulk"}))


def _served() -> list[ModelCard]:
    return [ModelCard(id="m")]


def stage(forward: bool = False, **kw: Any) -> ValidateStage:
    return ValidateStage(_served, priority_classes=PriorityClasses(CLASSES, "interactive", forward=forward), **kw)


def validate(validate_stage: ValidateStage, header: Optional[str] = None, caller: Caller = Caller(),
             key_name: Optional[str] = "anonymous", **fields: Any) -> Call:
    async def unused() -> bytes:
        return b""

    call = Call(RequestContext("r"), {} if header is None else {"x-unimodel-priority": header}, unused)
    call.ctx.caller, call.ctx.key_name = caller, key_name
    call.client_request = ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, **fields})
    asyncio.run(validate_stage.enter(call))
    return call


# ---- the class a request runs in -----------------------------------------------------------------------------


def test_without_a_header_a_request_runs_in_its_keys_class_else_the_default() -> None:
    call = validate(stage())
    request = call.require_engine_request()
    assert (call.ctx.priority_class, request.priority_rank, request.priority) == ("interactive", 0, None)
    call = validate(stage(), caller=BATCH_ONLY)
    assert (call.ctx.priority_class, call.require_engine_request().priority_rank) == ("batch", 10)


def test_the_header_names_the_class() -> None:
    for header, rank in (("batch", 10), (" bulk ", 20), ("interactive", 0)):
        call = validate(stage(), header)
        assert (call.ctx.priority_class, call.require_engine_request().priority_rank) == (header.strip(), rank)
    assert validate(stage(), "").ctx.priority_class == "interactive"  # an empty header names nothing
    assert validate(stage(), "bulk", caller=BATCH_ONLY).require_engine_request().priority_rank == 20


@pytest.mark.parametrize("header", ["urgent", "Batch", "bad name!", "x" * 300])
def test_an_unknown_class_is_the_clients_400_naming_the_header(header: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        validate(stage(), header)
    assert err.value.status_code == 400 and err.value.code == "priority_class_not_found"
    assert "X-Unimodel-Priority" in err.value.message and "interactive, batch, bulk" in err.value.message
    assert len(err.value.message) < 300  # the client's value is quoted only when it is a sane name


def test_a_class_the_key_may_not_use_is_a_403_naming_the_header() -> None:
    with pytest.raises(PermissionDeniedError) as err:
        validate(stage(), "interactive", caller=BATCH_ONLY)
    assert err.value.status_code == 403 and err.value.error_type == "permission_error"
    assert "X-Unimodel-Priority" in err.value.message and "'interactive'" in err.value.message
    assert "batch, bulk" in err.value.message


def test_the_class_is_in_the_context_even_when_validation_then_refuses() -> None:
    async def unused() -> bytes:
        return b""

    call = Call(RequestContext("r"), {"x-unimodel-priority": "batch"}, unused)
    call.client_request = ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, "n": 99})
    with pytest.raises(InvalidRequestError, match="n \\(99\\)"):  # past --max-n
        asyncio.run(stage().enter(call))
    assert call.ctx.priority_class == "batch"  # the request log and the metrics may read it of refusals too


# ---- forwarded as vLLM's priority ----------------------------------------------------------------------------


def test_the_rank_is_forwarded_only_when_the_operator_says_so() -> None:
    assert validate(stage(forward=False), "batch").require_engine_request().priority is None
    assert validate(stage(forward=True), "batch").require_engine_request().priority == 10
    assert validate(stage(forward=True)).require_engine_request().priority == 0  # the default class's rank


def test_an_explicit_allowed_priority_wins_over_the_class() -> None:
    # the operator allows any priority: the client's own goes, whatever its class
    request = validate(stage(forward=True, allow_priority=True), "batch", priority=-3).require_engine_request()
    assert (request.priority, request.priority_rank) == (-3, 10)
    # a key's range binds as before: inside it the client's value goes, outside it is a 400
    ranged = Caller(name="r", priority=(0, 5))
    assert validate(stage(forward=True), "batch", caller=ranged, priority=5).require_engine_request().priority == 5
    with pytest.raises(InvalidRequestError) as err:
        validate(stage(forward=True), "batch", caller=ranged, priority=6)
    assert err.value.param == "priority"
    # a priority the caller may not send is dropped, and the class's rank goes instead
    assert validate(stage(forward=True), "batch", priority=-100).require_engine_request().priority == 10
    assert validate(stage(forward=False), "batch", priority=-100).require_engine_request().priority is None


# ---- tenant and affinity -------------------------------------------------------------------------------------


def test_the_tenant_is_the_keys_name() -> None:
    assert validate(stage(), key_name="team-a").require_engine_request().tenant == "team-a"
    assert validate(stage(), key_name=None).require_engine_request().tenant is None


def test_affinity_is_the_prompt_cache_key_then_the_answer_continued_then_the_user() -> None:
    def wire(**fields: Any) -> ChatCompletionRequest:
        return ChatCompletionRequest.model_validate({"model": "m", "messages": MSG, **fields})

    assert affinity_of(wire()) is None
    assert affinity_of(wire(user="u1")) == "user:u1"
    assert affinity_of(wire(user="u1").continuing("chatcmpl-ab12")) == "chatcmpl-ab12"
    assert affinity_of(wire(user="u1", prompt_cache_key="s1").continuing("chatcmpl-ab12")) == "pck:s1"
    assert affinity_of(wire(prompt_cache_key="", user="u1")) == "user:u1"  # an empty key names no session
    # the three kinds never meet: a user named like a key or an id is still a user
    assert affinity_of(wire(user="pck:s1")) == "user:pck:s1"
    request = validate(stage(), user="u1", prompt_cache_key="s1").require_engine_request()
    assert request.affinity == "pck:s1"
    with pytest.raises(ValidationError):
        wire(prompt_cache_key="k" * 257)  # bounded like the Responses API's


def test_prompt_cache_key_is_forwarded_where_the_operator_allowlisted_it_as_before() -> None:
    allowlisted = ValidateStage(_served, upstream_extra_fields=["prompt_cache_key"])
    assert validate(allowlisted, prompt_cache_key="s1").require_engine_request().sampling.upstream_extra == {
        "prompt_cache_key": "s1"}
    assert validate(stage(), prompt_cache_key="s1").require_engine_request().sampling.upstream_extra == {}


def test_a_responses_request_maps_its_prompt_cache_key_and_the_answer_it_continues() -> None:
    request = ResponsesRequest.model_validate({"model": "m", "input": "hi", "prompt_cache_key": "s9"})
    assert chat_payload(request)["prompt_cache_key"] == "s9"
    shape = store_shape()
    _, first = turn(shape, {"input": "Hello"}, THINK_AND_ANSWER)
    assert first["id"].startswith("resp_")
    chat = asyncio.run(shape.to_chat({"model": "m", "input": "Again", "previous_response_id": first["id"],
                                      "user": "u1"}, new_call()))
    assert chat.continues == "chatcmpl-" + first["id"].removeprefix("resp_")
    assert affinity_of(chat) == chat.continues
    fresh = asyncio.run(shape.to_chat({"model": "m", "input": "Hi", "prompt_cache_key": "s9"}, new_call()))
    assert fresh.continues is None and affinity_of(fresh) == "pck:s9"
    # the mark survives the route stage's rewrite of the request
    assert chat.model_copy(update={"temperature": 0.5}).continues == chat.continues


def test_a_completions_request_may_send_prompt_cache_key() -> None:
    from unimodel.shapes.completions import CompletionsShape

    chat = asyncio.run(CompletionsShape().to_chat({"model": "m", "prompt": "x", "prompt_cache_key": "s1"},
                                                  new_call()))
    assert affinity_of(chat) == "pck:s1"


# ---- the key policy, the settings, the flags -----------------------------------------------------------------

HASH = hash_key("sk-test", n=2)


def key(**fields: Any) -> KeyPolicy:
    return KeyPolicy.model_validate({"name": "k", "key_hash": HASH, **fields})


def test_a_key_policy_names_its_class_and_the_classes_it_may_use() -> None:
    caller = key(priority_class="batch", priority_classes=["batch", "bulk"]).caller()
    assert (caller.priority_class, caller.priority_classes) == ("batch", frozenset({"batch", "bulk"}))
    plain = key().caller()
    assert (plain.priority_class, plain.priority_classes) == (None, None)
    for bad, fragment in (({"priority_class": "batch", "priority_classes": ["bulk"]}, "not among"),
                          ({"priority_classes": []}, "at least 1"), ({"priority_class": "no way"}, "pattern")):
        with pytest.raises(ValidationError, match=fragment):
            key(**bad)


def test_the_settings_hold_the_classes_and_refuse_what_does_not_agree() -> None:
    settings = Settings()
    assert (settings.priority_classes, settings.default_priority_class) == ({"interactive": 0, "batch": 10},
                                                                            "interactive")
    assert settings.pool_forward_priority is False
    ok = Settings(priority_classes=CLASSES, default_priority_class="batch",
                  keys=[key(priority_classes=["bulk"], priority_class="bulk")])
    assert ok.keys[0].priority_classes == ["bulk"]
    for bad, fragment in (
        ({"default_priority_class": "urgent"}, "default_priority_class 'urgent' is not a priority class"),
        ({"priority_classes": {}}, "at least one class"),
        ({"priority_classes": {"bad name": 1}, "default_priority_class": "bad name"}, "must be letters"),
        ({"keys": [key(priority_classes=["urgent"])]}, "names the priority class 'urgent'"),
        ({"keys": [key(priority_classes=["batch"])]}, "may not use 'interactive'"),
        ({"priority_classes": {"a": 2**63}, "default_priority_class": "a"}, "64-bit"),
    ):
        with pytest.raises(ConfigError, match=fragment):
            Settings.load(**bad)


def test_the_flags_and_the_config_file_reach_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from tests.support.serve_cli import serve_settings

    s = serve_settings(monkeypatch, "--priority-classes", "{interactive: 0, batch: 10, bulk: 99}",
                       "--default-priority-class", "batch", "--pool-forward-priority")
    assert (s.priority_classes["bulk"], s.default_priority_class, s.pool_forward_priority) == (99, "batch", True)
    cfg = tmp_path / "unimodel.yaml"
    cfg.write_text("priority_classes:\n  live: -5\n  offline: 50\ndefault_priority_class: live\n"
                   "pool_forward_priority: true\n")
    s = serve_settings(monkeypatch, "--config", str(cfg))
    assert (s.priority_classes, s.default_priority_class, s.pool_forward_priority) == (
        {"live": -5, "offline": 50}, "live", True)


def test_keys_create_writes_the_priority_fields_and_checks_them_against_the_config(tmp_path: Path) -> None:
    result = CliRunner().invoke(keys_cli.keys_app, ["create", "nightly", "--priority-class", "batch",
                                                    "--priority-classes", "batch"])
    assert result.exit_code == 0, result.stderr
    assert "priority_class: batch" in result.stdout and "priority_classes: [batch]" in result.stdout
    cfg = tmp_path / "c.yaml"
    cfg.write_text("priority_classes: {live: 0}\ndefault_priority_class: live\n")
    result = CliRunner().invoke(keys_cli.keys_app, ["create", "nightly", "--priority-classes", "batch",
                                                    "--config", str(cfg)])
    assert result.exit_code == 2 and "'batch', which does not exist" in result.stderr
