"""tiny-random: shaped like Mistral Small 4, a real v15 tekken, small, cached, reproducible."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from mistral_common.protocol.instruct.messages import UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy, TokenizerVersion
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from unimodel.models import ensure_tiny_random
from unimodel.models.tiny_random import build_checkpoint


def test_checkpoint_is_small_and_shaped_like_mistral_small_4(tiny_path: Path) -> None:
    config = json.loads((tiny_path / "config.json").read_text())
    assert config["architectures"] == ["Mistral4ForCausalLM"]
    assert config["q_lora_rank"] and config["kv_lora_rank"] and config["qk_rope_head_dim"]  # MLA
    assert config["n_routed_experts"] > config["num_experts_per_tok"] >= 2 and config["n_shared_experts"] == 1
    tok = MistralTokenizer.from_file(str(tiny_path / "tekken.json"))
    assert config["vocab_size"] == tok.instruct_tokenizer.tokenizer.n_words
    size = sum(p.stat().st_size for p in tiny_path.iterdir())
    assert size < 16 * 1024 * 1024


def test_tekken_is_v15_and_renders_model_settings(tiny_path: Path) -> None:
    tok = MistralTokenizer.from_file(str(tiny_path / "tekken.json"))
    assert tok.instruct_tokenizer.tokenizer.version == TokenizerVersion.v15
    req = ChatCompletionRequest(messages=[UserMessage(content="hi")], reasoning_effort="high")
    ids = tok.encode_chat_completion(req).tokens
    text = tok.decode(ids, special_token_policy=SpecialTokenPolicy.KEEP)
    assert text.startswith('<s>[MODEL_SETTINGS]{"reasoning_effort": "high"}[/MODEL_SETTINGS][INST]hi[/INST]')
    inner = tok.instruct_tokenizer.tokenizer
    for name in ("[THINK]", "[/THINK]", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "[MODEL_SETTINGS]"):
        assert inner.is_special(inner.get_special_token(name))


def test_built_once_then_reused(tiny_cache_dir: Path, tiny_path: Path) -> None:
    before = (tiny_path / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_random("tiny-random", tiny_cache_dir) == tiny_path
    assert (tiny_path / "model.safetensors").stat().st_mtime_ns == before
    assert not [p for p in tiny_cache_dir.iterdir() if p.name.startswith(".")]  # no build leftovers


def test_build_is_reproducible(tiny_path: Path, tmp_path: Path) -> None:
    build_checkpoint(tmp_path / "again", vision=False)

    def digest(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    for name in ("model.safetensors", "tekken.json", "config.json"):
        assert digest(tmp_path / "again" / name) == digest(tiny_path / name), name


def test_unknown_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tiny-random"):
        ensure_tiny_random("tiny-huge", tmp_path)
