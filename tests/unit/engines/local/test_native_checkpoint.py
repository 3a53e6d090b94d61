"""The embedded engine on a checkpoint in Mistral's native format (params.json + consolidated.safetensors)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
import torch
from transformers import Mistral4ForCausalLM

from tests.support.live_server import LiveServer
from unimodel.compose import build_engine
from unimodel.config import Settings
from unimodel.engines.local.loader import ModelLoadError, load_model
from unimodel.models.mistral_native import write_native


@pytest.fixture(scope="module")
def native_path(tiny_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-random, rewritten in the native format (with its tekken.json and generation_config.json)."""
    directory = tmp_path_factory.mktemp("native") / "tiny-native"
    write_native(Mistral4ForCausalLM.from_pretrained(str(tiny_path), dtype=torch.float32), directory)
    for name in ("tekken.json", "generation_config.json"):
        shutil.copy(tiny_path / name, directory / name)
    return directory


def test_native_checkpoint_loads_and_computes_what_the_hf_one_does(native_path: Path, tiny_path: Path) -> None:
    assert not (native_path / "config.json").exists()
    native = load_model(str(native_path), device="cpu", dtype="float32")
    hf = load_model(str(tiny_path), device="cpu", dtype="float32")
    assert type(native.model) is Mistral4ForCausalLM and not native.is_vision
    assert native.format.name == hf.format.name == "mistral" and native.max_model_len == hf.max_model_len
    assert native.model.generation_config.max_new_tokens == 256
    ids = torch.tensor([[1, 1500, 2000, 2500, 3000, 12, 900]])
    with torch.no_grad():
        assert torch.equal(native.model(ids).logits, hf.model(ids).logits)


def test_native_checkpoint_with_a_vision_encoder_is_refused(native_path: Path, tmp_path: Path) -> None:
    shutil.copytree(native_path, tmp_path / "vision")
    params = json.loads((tmp_path / "vision" / "params.json").read_text())
    params["vision_encoder"] = {"hidden_size": 32, "num_hidden_layers": 1}
    (tmp_path / "vision" / "params.json").write_text(json.dumps(params))
    with pytest.raises(ModelLoadError, match="vision encoder.*not supported yet") as err:
        load_model(str(tmp_path / "vision"), device="cpu")
    assert "params.json" in str(err.value)


def test_serve_answers_a_chat_request_from_a_native_checkpoint(native_path: Path, tiny_cache_dir: Path) -> None:
    settings = Settings(engine="local", model=str(native_path), cache_dir=tiny_cache_dir, device="cpu",
                        dtype="float32", max_num_seqs=2)
    with LiveServer(settings, build_engine(settings)) as server, \
            httpx.Client(base_url=server.base_url, timeout=120) as client:
        models = client.get("/models").json()["data"]
        reply = client.post("/chat/completions", json={
            "model": models[0]["id"], "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8,
            "temperature": 0})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "chat.completion" and body["choices"][0]["finish_reason"] in ("stop", "length")
    assert body["usage"]["completion_tokens"] >= 1
