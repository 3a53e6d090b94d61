"""The official openai client over real HTTP against the embedded engine on tiny-random(-vision)."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from PIL import Image

from tests.support.live_server import LiveServer, free_port
from unimodel.config import Settings
from unimodel.compose import build_engine

pytest.importorskip("llguidance")

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Lyon"]}},
    "required": ["city"], "additionalProperties": False}}}]


def _server(model: str, cache: Path) -> LiveServer:
    s = Settings(engine="local", model=model, cache_dir=cache, device="cpu", dtype="float32", max_num_seqs=4)
    return LiveServer(s, build_engine(s))


@pytest.fixture(scope="module")
def text_client(tiny_cache_dir: Path) -> Iterator[openai.OpenAI]:
    with _server("tiny-random", tiny_cache_dir) as server:
        yield openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def vision_client(tiny_cache_dir: Path) -> Iterator[openai.OpenAI]:
    with _server("tiny-random-vision", tiny_cache_dir) as server:
        yield openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0, timeout=120)


def _png_data_uri(color: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_chat_and_stream_agree(text_client: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "Hello!"}]
    whole = text_client.chat.completions.create(model="tiny-random", messages=msgs, max_tokens=12,  # type: ignore[arg-type]
                                                temperature=0)
    streamed = "".join(c.choices[0].delta.content or "" for c in text_client.chat.completions.create(
        model="tiny-random", messages=msgs, max_tokens=12, temperature=0, stream=True) if c.choices)  # type: ignore[arg-type]
    assert whole.choices[0].message.content == streamed
    assert whole.usage is not None and whole.usage.completion_tokens <= 12


def test_default_max_tokens_keeps_the_demo_model_short(text_client: openai.OpenAI) -> None:
    resp = text_client.chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": "Hi"}])  # type: ignore[arg-type]
    assert resp.usage is not None and resp.usage.completion_tokens <= 256


def test_forced_tool_call_comes_back_as_tool_calls(text_client: openai.OpenAI) -> None:
    resp = text_client.chat.completions.create(
        model="tiny-random", messages=[{"role": "user", "content": "Weather in Paris?"}],  # type: ignore[arg-type]
        tools=TOOLS, tool_choice="required", max_tokens=64, temperature=0)  # type: ignore[arg-type]
    calls = resp.choices[0].message.tool_calls or []
    assert resp.choices[0].finish_reason == "tool_calls" and calls
    assert calls[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments)["city"] in ("Paris", "Lyon")  # type: ignore[union-attr]


def test_json_schema_is_parseable_and_fits(text_client: openai.OpenAI) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}},
              "required": ["n", "ok"], "additionalProperties": False}
    resp = text_client.chat.completions.create(
        model="tiny-random", messages=[{"role": "user", "content": "JSON please"}], max_tokens=64,  # type: ignore[arg-type]
        response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": schema}})
    value = json.loads(resp.choices[0].message.content or "")
    assert set(value) == {"n", "ok"} and isinstance(value["n"], int) and isinstance(value["ok"], bool)


def test_image_to_text_only_model_is_400(text_client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        text_client.chat.completions.create(model="tiny-random", max_tokens=4, messages=[{  # type: ignore[arg-type]
            "role": "user", "content": [{"type": "text", "text": "What is this?"},
                                        {"type": "image_url", "image_url": {"url": _png_data_uri((255, 0, 0))}}]}])
    assert "image" in str(err.value)


def test_vision_model_sees_the_image(vision_client: openai.OpenAI) -> None:
    def ask(color: tuple[int, int, int], stream: bool) -> str:
        msgs = [{"role": "user", "content": [{"type": "text", "text": "Describe the image."},
                                             {"type": "image_url", "image_url": {"url": _png_data_uri(color)}}]}]
        resp = vision_client.chat.completions.create(model="tiny-random-vision", messages=msgs,  # type: ignore[call-overload]
                                                     max_tokens=8, temperature=0, stream=stream)
        if stream:
            return "".join(c.choices[0].delta.content or "" for c in resp if c.choices)
        return resp.choices[0].message.content or ""

    red, blue = ask((255, 0, 0), False), ask((0, 0, 255), False)
    assert red == ask((255, 0, 0), True)
    assert red != blue  # the pixels reach the model


def test_readme_first_command_serves_tiny_random(tiny_cache_dir: Path) -> None:
    port = free_port()
    env = {**os.environ, "UNIMODEL_CACHE_DIR": str(tiny_cache_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "unimodel.cli", "serve", "--model", "tiny-random",
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
        resp = client.chat.completions.create(model="tiny-random", messages=[{"role": "user", "content": "Hi"}],  # type: ignore[arg-type]
                                              max_tokens=5)
        assert resp.choices[0].message.content is not None
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "gibberish" in out
