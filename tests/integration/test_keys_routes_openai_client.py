"""A named key made by ``unimodel keys create`` and the routes, end to end: a real uvicorn gateway in front of the
scripted upstream, the official openai client, the ``X-Unimodel-Route`` header; then ``keys revoke`` and a
restart, and the key is refused."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import openai
import pytest
from typer.testing import CliRunner

from tests.conftest import ANSWER
from tests.support.live_server import LiveServer
from tests.support.scripted_upstream import ScriptedUpstream
from unimodel import keys_cli
from unimodel.config import Settings
from unimodel.compose import build_engine

MSG = [{"role": "user", "content": "What is 2+2?"}]
TOOLS: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
              {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]


def _gateway(cfg: Path, upstream: ScriptedUpstream) -> LiveServer:
    settings = Settings.load(cfg, engine="upstream", upstream=upstream.base_url, upstream_connect_timeout_s=1.0)
    return LiveServer(settings, build_engine(settings))


def _client(server: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=20)


def test_named_key_and_routes_with_the_openai_client(tmp_path: Path, scripted_upstream: ScriptedUpstream) -> None:
    result = CliRunner().invoke(keys_cli.keys_app, ["create", "team-a", "--routes", "default,hard,agent",
                                                    "--rpm", "600"])
    assert result.exit_code == 0, result.stderr
    secret = re.findall(r"sk-um-[A-Za-z0-9_-]{43}", result.stdout)[0]
    cfg = tmp_path / "unimodel.yaml"
    cfg.write_text(result.stdout[result.stdout.index("keys:\n"):]
                   + "routes:\n  hard: {max_tokens: 512}\n  agent: {tools: [get_weather]}\n")

    with _gateway(cfg, scripted_upstream) as server, _client(server, secret) as client:
        raw = client.chat.completions.with_raw_response.create(model="raw-plain", messages=MSG,  # type: ignore
                                                               extra_body={"route": "hard"})
        assert raw.headers["x-unimodel-route"] == "hard"
        assert raw.parse().choices[0].message.content == ANSWER
        seen = scripted_upstream.requests[-1]
        assert seen["reasoning_effort"] == "high" and "route" not in seen  # the hard route's default effort

        raw = client.chat.completions.with_raw_response.create(model="raw-plain", messages=MSG)  # type: ignore
        assert raw.headers["x-unimodel-route"] == "default"
        raw = client.chat.completions.with_raw_response.create(  # type: ignore
            model="parsed-tools", messages=MSG, tools=TOOLS[:1], extra_headers={"X-Unimodel-Route": "agent"})
        assert raw.headers["x-unimodel-route"] == "agent"
        assert raw.parse().choices[0].finish_reason == "tool_calls"

        with pytest.raises(openai.PermissionDeniedError, match="get_time") as denied:
            client.chat.completions.create(model="raw-plain", messages=MSG, tools=TOOLS)  # type: ignore
        assert denied.value.response.headers["x-unimodel-route"] == "agent"
        with pytest.raises(openai.PermissionDeniedError, match="image"):
            client.chat.completions.create(model="raw-plain", messages=MSG,  # type: ignore
                                           extra_body={"route": "image"})
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="raw-plain", messages=MSG, max_tokens=1000,  # type: ignore
                                           extra_body={"route": "hard"})
        assert bad.value.body["param"] == "max_tokens"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model="raw-plain", messages=MSG,  # type: ignore
                                           extra_body={"route": "warp"})
        assert bad.value.body["param"] == "route" and "warp" in bad.value.message  # type: ignore[index]
        with _client(server, secret[:-1] + "_") as stranger, pytest.raises(openai.AuthenticationError):
            stranger.chat.completions.create(model="raw-plain", messages=MSG)  # type: ignore

    revoked = CliRunner().invoke(keys_cli.keys_app, ["revoke", "team-a", "--config", str(cfg)])
    assert revoked.exit_code == 0, revoked.stderr
    with _gateway(cfg, scripted_upstream) as server, _client(server, secret) as client:
        with pytest.raises(openai.AuthenticationError, match="revoked") as refused:
            client.chat.completions.create(model="raw-plain", messages=MSG)  # type: ignore
        assert refused.value.code == "invalid_api_key" and secret not in str(refused.value)
