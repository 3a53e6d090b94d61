"""One pipeline for every API shape: chat completions, the Responses API, Anthropic's Messages API and the text
completions are adapters onto the same stages, so a key's limits, the idempotency store and the request log
cannot tell which shape a request came in.

Each test sends the same conversation in every shape, with the official clients where they exist (openai,
anthropic), to a live server in front of the scripted upstream.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from typer.testing import CliRunner

from tests.support.live_server import LiveServer
from tests.support.scripted_upstream import ScriptedUpstream
from unimodel import keys_cli
from unimodel.compose import build_engine
from unimodel.config import Settings
from unimodel.telemetry.request_log import RequestLog

PROMPT = "What is 2+2?"
MODEL = "raw-plain"  # the scripted upstream's plain answer (tests/conftest.py)


def named_key(tmp_path: Path, *flags: str) -> tuple[str, Path]:
    """A named key made by `unimodel keys create` with ``flags``, and the config file that holds it."""
    made = CliRunner().invoke(keys_cli.keys_app, ["create", "team-shapes", *flags])
    assert made.exit_code == 0, made.stderr
    secret = re.findall(r"sk-um-[A-Za-z0-9_-]{43}", made.stdout)[0]
    cfg = tmp_path / "unimodel.yaml"
    cfg.write_text(made.stdout[made.stdout.index("keys:\n"):])
    return secret, cfg


@pytest.fixture
def keyed(tmp_path: Path, scripted_upstream: ScriptedUpstream) -> Iterator[tuple[LiveServer, str]]:
    secret, cfg = named_key(tmp_path, "--rpm", "4")
    settings = Settings.load(cfg, engine="upstream", upstream=scripted_upstream.base_url,
                             upstream_connect_timeout_s=1.0, data_dir=tmp_path / "data")
    with LiveServer(settings, build_engine(settings)) as server:
        yield server, secret


def clients(server: LiveServer, key: str) -> tuple[openai.OpenAI, anthropic.Anthropic]:
    return (openai.OpenAI(base_url=server.base_url, api_key=key, max_retries=0, timeout=30),
            anthropic.Anthropic(base_url=server.base_url.removesuffix("/v1"), api_key=key, max_retries=0, timeout=30))


def every_shape(oai: openai.OpenAI, claude: anthropic.Anthropic) -> dict[str, Any]:
    """The same question in each shape; each call returns the answer's text."""
    return {
        "chat": lambda: oai.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": PROMPT}]).choices[0].message.content,
        "responses": lambda: oai.responses.create(model=MODEL, input=PROMPT, store=False).output_text,
        "messages": lambda: claude.messages.create(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": PROMPT}]).content[-1].text,
        "completions": lambda: oai.completions.create(model=MODEL, prompt=PROMPT, max_tokens=64).choices[0].text,
    }


def test_one_keys_rpm_is_one_budget_across_every_shape(keyed: tuple[LiveServer, str]) -> None:
    server, key = keyed
    oai, claude = clients(server, key)
    with oai, claude:
        shapes = every_shape(oai, claude)
        for name, ask in shapes.items():  # four requests: the key's whole minute, one in each shape
            assert ask(), name
        for name, ask in shapes.items():  # the fifth, in any shape, is over it, and refused in that shape's form
            expected = anthropic.RateLimitError if name == "messages" else openai.RateLimitError
            with pytest.raises(expected) as refused:
                ask()
            assert refused.value.response.headers.get("retry-after"), name
            body = refused.value.body
            if name == "messages":
                assert body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
            else:
                assert body["code"] == "rate_limit_exceeded", (name, body)  # type: ignore[index]


def test_the_request_log_cannot_tell_the_shapes_apart(keyed: tuple[LiveServer, str]) -> None:
    server, key = keyed
    oai, claude = clients(server, key)
    with oai, claude:
        shapes = every_shape(oai, claude)
        for ask in list(shapes.values())[:3]:  # chat, responses, messages: the same chat request underneath
            ask()
    log = server.app.state.request_log
    assert isinstance(log, RequestLog) and log.writer.wait_idle(20)
    rows = sorted(log.store.rows(), key=lambda r: r["created_at"])[-3:]
    keep = ("key_name", "route", "model", "status", "finish_reason", "prompt_tokens", "completion_tokens",
            "reasoning_tokens", "tokens_estimated", "error_type")
    seen = [{k: row[k] for k in keep} for row in rows]
    assert seen[0]["key_name"] == "team-shapes" and seen[0]["status"] == 200
    assert seen[0] == seen[1] == seen[2], seen


def test_an_idempotency_key_is_one_request_whatever_the_shape(tmp_path: Path,
                                                               scripted_upstream: ScriptedUpstream) -> None:
    """The idempotency store keys on the one chat request: the same Idempotency-Key with the same request in
    another shape is that request's replay; with another request it is a 409, in that shape's error form."""
    settings = Settings(engine="upstream", upstream=scripted_upstream.base_url, upstream_connect_timeout_s=1.0,
                        api_keys=["sk-idem"], data_dir=tmp_path / "data")
    with LiveServer(settings, build_engine(settings)) as server, \
            httpx.Client(base_url=server.base_url, timeout=30, headers={"Authorization": "Bearer sk-idem"}) as http:
        idem = {"Idempotency-Key": uuid.uuid4().hex}
        first = http.post("/responses", json={"model": MODEL, "input": PROMPT, "store": False}, headers=idem)
        again = http.post("/responses", json={"model": MODEL, "input": PROMPT, "store": False}, headers=idem)
        assert first.status_code == again.status_code == 200, (first.text, again.text)
        assert again.headers.get("idempotent-replayed") == "true"
        assert again.json()["id"] == first.json()["id"] and again.json()["output"] == first.json()["output"]
        other = http.post("/messages", json={"model": MODEL, "max_tokens": 64,
                                             "messages": [{"role": "user", "content": "Something else"}]},
                          headers=idem)
        assert other.status_code == 409, other.text
        assert other.json()["type"] == "error" and other.json()["error"]["type"] == "conflict_error"
