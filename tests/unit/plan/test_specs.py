"""Parameter counts from config.json, checked against arithmetic written out from the configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unimodel.plan.builtin import MISTRAL_SMALL_4
from unimodel.plan.specs import SpecError, load_spec, spec_from_config

from .arithmetic import EXPERTS, KV_LORA, LAYERS, ROPE, VOCAB, H, K, small_4_by_hand

def test_mistral_small_4_total_and_active_parameters_from_its_config() -> None:
    n = small_4_by_hand()
    spec = load_spec("mistral-small-4")
    total = sum(v for k, v in n.items() if k not in ("expert", "attention_replicated"))
    assert spec.total_params == total == 119_401_298_944
    assert 118.5e9 < spec.total_params < 120.0e9  # published: 119B
    # per token: attention, 4 of 128 routed experts, the shared expert, router, norms, embeddings, lm_head
    active = (n["attention"] + LAYERS * K * n["expert"] + n["shared"] + n["router"] + n["norms"]
              + n["embeddings"] + n["lm_head"])
    assert spec.active_params == active
    assert 6.3e9 < spec.active_params < 6.9e9  # published: 6.5B active
    assert spec.part("vision tower").params + spec.part("projector").params == n["vision"]
    assert 0.40e9 < n["vision"] < 0.45e9  # the vision tower is ~0.4B
    assert spec.attention == "mla" and spec.kv_lora_rank == KV_LORA and spec.qk_rope_head_dim == ROPE
    assert spec.experts == EXPERTS and spec.experts_per_token == K


def test_text_weights_match_the_published_bf16_size() -> None:
    """The BF16 GGUF of the text model is 221.64 GiB: our count, at 2 bytes, lands within 0.1%."""
    spec = load_spec("mistral-small-4")
    text = spec.total_params - spec.part("vision tower").params - spec.part("projector").params
    assert text * 2 / 2**30 == pytest.approx(221.64, rel=1e-3)


def test_counts_equal_transformers_own_model_to_the_parameter() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "Mistral4Config"):
        pytest.skip("this transformers has no Mistral4")
    config = transformers.Mistral3Config(**{k: v for k, v in MISTRAL_SMALL_4.items() if k != "architectures"})
    with torch.device("meta"):
        model = transformers.Mistral3ForConditionalGeneration(config)
    assert sum(p.numel() for p in model.parameters()) == load_spec("mistral-small-4").total_params


def test_gqa_model_counts() -> None:
    # Mistral Small 3.2 (24B): 40 layers, hidden 5120, 32 heads / 8 KV heads of 128, MLP 32768, Pixtral
    h, layers, heads, kv, hd, inter, vocab = 5120, 40, 32, 8, 128, 32768, 131072
    attention = layers * (2 * h * heads * hd + 2 * h * kv * hd)  # q, o; k, v
    mlp = layers * 3 * h * inter
    norms = layers * 2 * h + h
    vision = 24 * (4 * 1024**2 + 3 * 1024 * 4096 + 2 * 1024) + 3 * 14 * 14 * 1024 + 1024
    projector = 1024 + 4 * 1024 * 1024 + 1024 * h + h * h
    spec = load_spec("mistral-small-3.2-24b")
    assert spec.total_params == attention + mlp + norms + 2 * vocab * h + vision + projector
    assert 23.5e9 < spec.total_params < 24.5e9  # published: 24B
    assert spec.attention == "gqa" and (spec.kv_heads, spec.head_dim) == (kv, hd)
    assert spec.active_params == spec.total_params - vision - projector  # dense: every text weight, every token
    # Llama 3.3 70B: published 70.6B
    assert 70.0e9 < load_spec("llama-3.3-70b").total_params < 71.0e9
    # Qwen2.5-VL-32B (33.5B published): transformers instantiates 33,452,718,336
    assert load_spec("qwen2.5-vl-32b").total_params == 33_452_718_336


def test_wrapper_tie_flag_wins_as_in_transformers() -> None:
    text = {**MISTRAL_SMALL_4["text_config"], "tie_word_embeddings": False}
    tied = spec_from_config("x", {**MISTRAL_SMALL_4, "tie_word_embeddings": True, "text_config": text})
    untied = load_spec("mistral-small-4")
    assert untied.total_params - tied.total_params == VOCAB * H  # the lm_head


def test_a_checkpoint_directory_is_read_from_its_config_json(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(MISTRAL_SMALL_4))
    assert load_spec(str(tmp_path)).total_params == load_spec("mistral-small-4").total_params
    assert load_spec(str(tmp_path / "config.json")).attention == "mla"


@pytest.mark.parametrize("config,fragment", [
    ({"architectures": ["BertModel"], "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
      "vocab_size": 30522}, "not a decoder"),
    ({"architectures": ["T5ForConditionalGeneration"], "is_encoder_decoder": True, "hidden_size": 512},
     "not a decoder"),
    ({"architectures": ["LlamaForCausalLM"], "hidden_size": 4096}, "no positive 'num_hidden_layers'"),
    ({"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
      "vocab_size": 10}, "lacks a field"),  # no intermediate_size
])
def test_configs_that_are_not_decoders_are_refused(config: dict[str, object], fragment: str) -> None:
    with pytest.raises(SpecError, match=fragment):
        spec_from_config("m", config)


def test_a_hub_id_is_read_from_the_hub_cache_without_network(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "models--mistralai--Mistral-Small-4-119B-2603"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text(json.dumps(MISTRAL_SMALL_4))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = load_spec("mistralai/Mistral-Small-4-119B-2603")
    assert spec.total_params == load_spec("mistral-small-4").total_params
    with pytest.raises(SpecError, match="not in the hub cache, and the hub is not reachable"):
        load_spec("mistralai/not-cached")


def test_unreadable_and_missing_configs(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(str(tmp_path))
    with pytest.raises(SpecError, match="not a built-in model"):
        load_spec(str(tmp_path / "missing"))
