"""The route stage: choice by field, header and rules; key route permissions; defaults and caps; tool
allowlists; and the settings that configure routes and keys."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Optional

import pytest
from PIL import Image

from unimodel.config import ConfigError, Settings
from unimodel.formats.reasoning import ModelReasoning, ReasoningPolicy
from unimodel.formats.registry import get_format
from unimodel.engines.base import GenerationRequest
from unimodel.errors import InvalidRequestError, PermissionDeniedError, UnimodelError
from unimodel.gateway.auth import ApiKeyAuth
from unimodel.gateway.images import ImagePolicy, ImagePolicyStage
from unimodel.gateway.keyhash import hash_key, key_prefix, new_key
from unimodel.gateway.policy import KeyPolicy, RoutePolicy, resolve_routes
from unimodel.gateway.routes import ROUTE_HEADER, RouteStage
from unimodel.protocol.events import Event
from unimodel.service.chat import ChatService
from unimodel.service.context import RequestContext
from unimodel.service.parse import ParseStage
from unimodel.service.pipeline import Call, Pipeline
from unimodel.service.validate import ValidateStage
from tests.unit.service.test_pipeline import ScriptedEngine

MSG = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
OTHER_TOOL = {"type": "function", "function": {"name": "get_time"}}


def image_message(n: int = 1) -> list[dict[str, Any]]:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    return [{"role": "user", "content": [{"type": "text", "text": "look"},
                                         *({"type": "image_url", "image_url": {"url": url}} for _ in range(n))]}]


class Recording(ScriptedEngine):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Event]:
        self.requests.append(request)
        async for event in super().generate(request):
            yield event


KEYS = {"narrow": "sk-narrow", "hard-only": "sk-hard-only", "toolish": "sk-toolish", "capped": "sk-capped"}


def _named() -> list[KeyPolicy]:
    def make(name: str, secret: str, **policy: Any) -> KeyPolicy:
        return KeyPolicy(name=name, key_hash=hash_key(secret, n=2**10), prefix=None, **policy)

    return [make("narrow", KEYS["narrow"], routes=["default"]),
            make("hard-only", KEYS["hard-only"], routes=["hard"]),
            make("toolish", KEYS["toolish"], allowed_tools=["get_time"]),
            make("capped", KEYS["capped"], max_tokens_cap=50)]


NAMED = _named()


def service(routes: Optional[dict[str, Any]] = None, *, policy: ReasoningPolicy = ReasoningPolicy(),
            engine: Optional[Recording] = None) -> tuple[ChatService, Recording]:
    engine = engine or Recording()
    resolved = resolve_routes({k: None if v is None else RoutePolicy.model_validate(v)
                               for k, v in (routes or {}).items()})
    reasoning = ModelReasoning(policy, get_format("mistral"))
    pipeline = Pipeline([ApiKeyAuth(["sk-plain"], NAMED), ParseStage(),
                         RouteStage(resolved, reasoning_for=lambda _: reasoning),
                         ValidateStage(engine.models, lambda _: reasoning), ImagePolicyStage(ImagePolicy())])
    return ChatService(engine, pipeline), engine


def make_call(body: dict[str, Any], key: str = "sk-plain", **headers: str) -> Call:
    raw = json.dumps({"model": "m", "messages": MSG, **body}).encode()

    async def read() -> bytes:
        return raw

    return Call(RequestContext("r"), {"authorization": f"Bearer {key}", **headers}, read)


async def run(svc: ChatService, c: Call) -> GenerationRequest:
    await svc.complete(await svc.prepare(c))
    return c.require_engine_request()


async def refused(svc: ChatService, c: Call) -> UnimodelError:
    with pytest.raises(UnimodelError) as info:
        await svc.prepare(c)
    return info.value


# ---- choice ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body,headers,expected", [
    ({}, {}, "default"),
    ({"route": "hard"}, {}, "hard"),
    ({}, {"x-unimodel-route": "hard"}, "hard"),
    ({"route": "agent"}, {"x-unimodel-route": "hard"}, "agent"),  # the field wins over the header
    ({"tools": [TOOL]}, {}, "agent"),
    ({"messages": image_message()}, {}, "image"),
    ({"messages": image_message(), "tools": [TOOL]}, {}, "image"),
    ({"tools": [TOOL], "route": "default"}, {}, "default"),
])
async def test_route_choice(body: dict[str, Any], headers: dict[str, str], expected: str) -> None:
    svc, _ = service()
    c = make_call(body, **headers)
    await run(svc, c)
    assert c.ctx.route == expected and c.response_headers[ROUTE_HEADER] == expected
    route = c.route
    assert route is not None and route.name == expected
    assert route.upstreams is None and route.total_timeout_s is None


@pytest.mark.parametrize("body,headers", [({"route": "fast"}, {}), ({}, {"x-unimodel-route": "fast"})])
async def test_unknown_route_is_400_naming_it(body: dict[str, Any], headers: dict[str, str]) -> None:
    svc, _ = service()
    err = await refused(svc, make_call(body, **headers))
    assert isinstance(err, InvalidRequestError) and err.param == "route" and err.code == "route_not_found"
    assert "'fast'" in err.message and "default, hard, image, agent" in err.message


async def test_invalid_route_name_is_not_echoed() -> None:
    svc, _ = service()
    err = await refused(svc, make_call({"route": "<script>x</script>"}))
    assert err.status_code == 400 and "<script>" not in err.message


async def test_key_without_the_route_is_403() -> None:
    svc, _ = service()
    err = await refused(svc, make_call({"route": "hard"}, key=KEYS["narrow"]))
    assert isinstance(err, PermissionDeniedError) and err.status_code == 403 and err.param == "route"
    assert err.code == "permission_denied"
    c = make_call({}, key=KEYS["narrow"], **{"x-unimodel-route": "agent"})
    assert (await refused(svc, c)).status_code == 403


async def test_rules_fall_back_to_the_keys_own_route() -> None:
    svc, engine = service()
    c = make_call({"messages": image_message()}, key=KEYS["narrow"])  # the rule says image; the key has default
    await run(svc, c)
    assert c.ctx.route == "default"
    c = make_call({}, key=KEYS["hard-only"])
    request = await run(svc, c)
    assert c.ctx.route == "hard" and request.effort == "high"


# ---- defaults and caps ------------------------------------------------------------------------------------


async def test_hard_route_defaults_to_high_effort_unless_the_client_says() -> None:
    svc, _ = service()
    assert (await run(svc, make_call({"route": "hard"}))).effort == "high"
    assert (await run(svc, make_call({"route": "hard", "reasoning_effort": "none"}))).effort == "none"
    assert (await run(svc, make_call({}))).effort == "none"


async def test_effort_above_the_maximum_is_400_and_defaults_are_clamped() -> None:
    svc, _ = service({"hard": {"max_reasoning_effort": "medium", "default_reasoning_effort": "medium"},
                      "default": {"max_reasoning_effort": "low"}},
                     policy=ReasoningPolicy(default_effort="high"))
    err = await refused(svc, make_call({"route": "hard", "reasoning_effort": "high"}))
    assert err.status_code == 400 and err.param == "reasoning_effort" and "'medium'" in err.message
    assert (await run(svc, make_call({"route": "hard"}))).effort == "medium"
    assert (await run(svc, make_call({}))).effort == "low"  # the model's default, high, lowered to the maximum
    assert (await run(svc, make_call({"route": "image"}))).effort == "high"


async def test_a_thinking_budget_beyond_the_maximums_policy_is_400() -> None:
    svc, _ = service({"hard": {"max_reasoning_effort": "medium", "default_reasoning_effort": "low"}})
    for body in ({"reasoning_effort": "low", "thinking_budget": 4097}, {"thinking_budget": 10**6}):
        err = await refused(svc, make_call({"route": "hard", **body}))
        assert err.status_code == 400 and err.param == "thinking_budget", body
        assert "'medium'" in err.message and "4096" in err.message
    request = await run(svc, make_call({"route": "hard", "reasoning_effort": "low", "thinking_budget": 4096}))
    assert request.thinking_budget == 4096 and request.model_effort == "high"
    err = await refused(svc, make_call({"route": "hard", "reasoning_effort": "none", "thinking_budget": 10}))
    assert err.param == "thinking_budget" and "turns it off" in err.message  # as validate says it
    no_maximum = await run(svc, make_call({"reasoning_effort": "low", "thinking_budget": 10**6}))
    assert no_maximum.thinking_budget == 10**6  # the default route has no maximum


async def test_max_tokens_cap_refuses_explicit_and_clamps_the_default() -> None:
    svc, _ = service({"default": {"max_tokens": 100}})
    for field in ("max_tokens", "max_completion_tokens"):
        err = await refused(svc, make_call({field: 101}))
        assert err.status_code == 400 and err.param == field and "route 'default'" in err.message
    request = await run(svc, make_call({"max_tokens": 100}))
    assert request.max_tokens == 100
    request = await run(svc, make_call({}))
    assert request.max_tokens is None and request.default_max_tokens == 100


async def test_the_keys_max_tokens_cap_applies_like_the_routes() -> None:
    svc, _ = service({"default": {"max_tokens": 100}})
    err = await refused(svc, make_call({"max_tokens": 60}, key=KEYS["capped"]))
    assert err.param == "max_tokens" and "this API key" in err.message
    assert (await run(svc, make_call({}, key=KEYS["capped"]))).default_max_tokens == 50


async def test_temperature_range_and_default() -> None:
    svc, _ = service({"agent": {"min_temperature": 0.0, "max_temperature": 1.0, "default_temperature": 0.2}})
    err = await refused(svc, make_call({"route": "agent", "temperature": 1.5}))
    assert err.status_code == 400 and err.param == "temperature"
    assert (await run(svc, make_call({"route": "agent"}))).sampling.temperature == 0.2
    assert (await run(svc, make_call({"route": "agent", "temperature": 0.7}))).sampling.temperature == 0.7
    assert (await run(svc, make_call({}))).sampling.temperature is None


async def test_images_off_and_per_route_image_caps() -> None:
    svc, _ = service({"default": {"images": False}, "image": {"max_images": 1}})
    err = await refused(svc, make_call({"route": "default", "messages": image_message()}))
    assert err.status_code == 400 and err.param == "messages" and "'default'" in err.message
    err = await refused(svc, make_call({"messages": image_message(2)}))
    assert err.status_code == 400 and "at most 1" in err.message
    c = make_call({"messages": image_message(1)})
    await run(svc, c)
    assert c.ctx.route == "image"


# ---- tools -----------------------------------------------------------------------------------------------


async def test_tool_not_on_the_routes_allowlist_is_403_naming_it() -> None:
    svc, _ = service({"agent": {"tools": ["get_weather"]}, "default": {"tools": "none"}})
    await run(svc, make_call({"tools": [TOOL]}))
    err = await refused(svc, make_call({"tools": [TOOL, OTHER_TOOL]}))
    assert isinstance(err, PermissionDeniedError) and "'get_time'" in err.message and err.param == "tools"
    err = await refused(svc, make_call({"route": "default", "tools": [TOOL]}))
    assert err.status_code == 403 and "'get_weather'" in err.message and "takes no tools" in err.message


async def test_tool_not_on_the_keys_allowlist_is_403_naming_it() -> None:
    svc, _ = service()
    await run(svc, make_call({"tools": [OTHER_TOOL]}, key=KEYS["toolish"]))
    err = await refused(svc, make_call({"tools": [OTHER_TOOL, TOOL]}, key=KEYS["toolish"]))
    assert err.status_code == 403 and "'get_weather'" in err.message and "API key" in err.message


async def test_tool_choice_naming_a_tool_not_in_tools_is_400() -> None:
    svc, _ = service()
    err = await refused(svc, make_call({"tools": [TOOL], "tool_choice": {"type": "function",
                                                                         "function": {"name": "nope"}}}))
    assert err.status_code == 400 and err.param == "tool_choice"


async def test_refusals_after_the_choice_still_name_the_route() -> None:
    svc, _ = service({"agent": {"tools": "none"}})
    c = make_call({"tools": [TOOL]})
    await refused(svc, c)
    assert c.response_headers[ROUTE_HEADER] == "agent"


# ---- settings ----------------------------------------------------------------------------------------------


def test_routes_merge_over_the_shipped_ones() -> None:
    s = Settings(routes={"hard": {"max_tokens": 10}, "image": None, "cheap": {"max_reasoning_effort": "none"}})
    routes = s.route_policies
    assert set(routes) == {"default", "hard", "agent", "cheap"}
    assert routes["hard"].default_reasoning_effort == "high" and routes["hard"].max_tokens == 10
    assert routes["cheap"].name == "cheap"


@pytest.mark.parametrize("values,fragment", [
    ({"routes": {"default": None}}, "cannot be removed"),
    ({"routes": {"hard": {"max_reasoning_effort": "low"}}}, "above max_reasoning_effort"),
    ({"routes": {"bad name": {}}}, "route name"),
    ({"routes": {"x": {"tools": "some"}}}, "routes"),
    ({"routes": {"x": {"min_temperature": 1.0, "max_temperature": 0.5}}}, "min_temperature"),
    ({"keys": [{"name": "a", "key_hash": "nope"}]}, "key_hash"),
    ({"keys": [{"name": "key-3", "key_hash": hash_key("k", n=2**10)}]}, "reserved"),
    ({"keys": [{"name": "a", "key_hash": hash_key("k", n=2**10)}] * 2}, "two keys"),
    ({"keys": [{"name": "a", "key_hash": hash_key("k", n=2**10), "routes": ["nope"]}]}, "nope"),
    ({"keys": [{"name": "a", "key_hash": hash_key("k", n=2**10), "rpm": -1}]}, "rpm"),
])
def test_bad_keys_and_routes_are_config_errors(tmp_path: Path, values: dict[str, Any], fragment: str) -> None:
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(values))
    with pytest.raises(ConfigError, match=fragment):
        Settings.load(cfg)


def test_keys_and_routes_from_a_yaml_file(tmp_path: Path) -> None:
    secret = new_key()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
keys:
  - name: team-a
    prefix: {key_prefix(secret)}
    key_hash: {hash_key(secret, n=2**10)}
    routes: [default, agent]
    rpm: 60
routes:
  agent:
    tools: [get_weather]
    timeouts: {{connect_s: 2, first_token_s: 30, total_s: 300}}
    upstreams: [primary, fallback-1]
""")
    s = Settings.load(cfg)
    assert s.keys[0].caller().rpm == 60
    agent = s.route_policies["agent"]
    assert agent.timeouts.first_token_s == 30 and agent.upstreams == ["primary", "fallback-1"]


def test_build_stages_puts_route_after_parse_before_validate() -> None:
    from unimodel.compose import build_engines, build_stages

    names = [s.name for s in build_stages(Settings(), build_engines(Settings(), ScriptedEngine()))]
    assert names[:5] == ["auth", "parse", "route", "validate", "images"]
    limited = Settings(rpm=10, tpm=1000)
    names = [s.name for s in build_stages(limited, build_engines(limited, ScriptedEngine()))]
    # the key's requests before the body is read; tokens, users and high reasoning before any image work
    assert names[:7] == ["auth", "limits.requests", "parse", "route", "validate", "limits", "images"]
