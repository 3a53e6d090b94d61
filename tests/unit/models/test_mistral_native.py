"""Mistral's native format ↔ Mistral4ForCausalLM: lossless both ways, in the keys and names vLLM 0.32 reads."""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Mistral4Config, Mistral4ForCausalLM

from unimodel.models import mistral_native as mn
from unimodel.models.tiny_random import _text_config_kwargs

IDS = torch.tensor([[1, 5, 900, 1234, 77, 3000, 42, 8, 19, 2024]])
POSITIONS = torch.arange(10)[None] * 2000  # past original_max_position_embeddings (8192): llama-4 scaling acts


def _model(seed: int = 0, **overrides: Any) -> Mistral4ForCausalLM:
    kwargs = {**_text_config_kwargs(), "first_k_dense_replace": 1, **overrides}  # layer 0 dense, layer 1 MoE
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Mistral4ForCausalLM(Mistral4Config(**kwargs)).eval()
        with torch.no_grad():  # larger weights: routing and rope visibly matter to the logits
            for p in model.parameters():
                if p.dim() >= 2:
                    p.mul_(4.0)
    return model


def _logits(model: Mistral4ForCausalLM) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS, position_ids=POSITIONS).logits


def test_round_trip_keeps_every_weight_and_the_logits(tmp_path: Path) -> None:
    model = _model()
    mn.write_native(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["consolidated.safetensors", "params.json"]
    loaded = mn.load_native(tmp_path, torch.float32)
    assert isinstance(loaded, Mistral4ForCausalLM) and not loaded.training
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert torch.equal(_logits(model), _logits(loaded))
    assert mn.params_from_config(loaded.config) == mn.params_from_config(model.config)


def test_native_names_are_vllms(tmp_path: Path) -> None:
    model = _model()
    mn.write_native(model, tmp_path)
    names = set(load_file(str(tmp_path / "consolidated.safetensors")))
    attention = {f"attention.{n}.weight" for n in ("wq_a", "q_a_norm", "wq_b", "wkv_a_with_mqa", "kv_a_norm",
                                                    "wkv_b", "wo")}
    norms = {"attention_norm.weight", "ffn_norm.weight"}
    dense = {f"feed_forward.w{i}.weight" for i in (1, 2, 3)}
    moe = ({"gate.weight"} | {f"shared_experts.w{i}.weight" for i in (1, 2, 3)}
           | {f"experts.{e}.w{i}.weight" for e in range(4) for i in (1, 2, 3)})
    want = ({"tok_embeddings.weight", "norm.weight", "output.weight"}
            | {f"layers.0.{n}" for n in attention | norms | dense} | {f"layers.1.{n}" for n in attention | norms | moe})
    assert names == want


def test_experts_split_gate_rows_first() -> None:
    model = _model()
    native = mn.to_native(model.state_dict(), model.config)
    gate_up = model.model.layers[1].mlp.experts.gate_up_proj.detach()
    down = model.model.layers[1].mlp.experts.down_proj.detach()
    inter = model.config.moe_intermediate_size
    for e in range(4):
        assert torch.equal(native[f"layers.1.experts.{e}.w1.weight"], gate_up[e, :inter])
        assert torch.equal(native[f"layers.1.experts.{e}.w3.weight"], gate_up[e, inter:])
        assert torch.equal(native[f"layers.1.experts.{e}.w2.weight"], down[e])
    back = mn.from_native(native, model.config)
    assert torch.equal(back["model.layers.1.mlp.experts.gate_up_proj"], gate_up)


def test_a_rotate_half_model_is_written_in_the_pair_layout(tmp_path: Path) -> None:
    model = _model(rope_interleave=False)
    mn.write_native(model, tmp_path / "permuted")
    loaded = mn.load_native(tmp_path / "permuted", torch.float32)
    assert loaded.config.rope_interleave is True  # what vLLM runs (is_neox_style=False)
    assert torch.allclose(_logits(model), _logits(loaded), atol=1e-5, rtol=0)
    # the control: the same weights written without the permutation compute something else
    model.config.rope_interleave = True
    mn.write_native(model, tmp_path / "plain")
    model.config.rope_interleave = False
    unpermuted = mn.load_native(tmp_path / "plain", torch.float32)
    assert not torch.allclose(_logits(model), _logits(unpermuted), atol=1e-3, rtol=0)


def test_several_consolidated_files_load_as_one(tmp_path: Path) -> None:
    model = _model()
    mn.write_native(model, tmp_path)
    tensors = load_file(str(tmp_path / "consolidated.safetensors"))
    (tmp_path / "consolidated.safetensors").unlink()
    names = sorted(tensors)
    save_file({k: tensors[k] for k in names[::2]}, str(tmp_path / "consolidated-00001-of-00002.safetensors"))
    save_file({k: tensors[k] for k in names[1::2]}, str(tmp_path / "consolidated-00002-of-00002.safetensors"))
    assert torch.equal(_logits(model), _logits(mn.load_native(tmp_path, torch.float32)))
    save_file({names[0]: tensors[names[0]]}, str(tmp_path / "consolidated-extra.safetensors"))
    with pytest.raises(mn.NativeFormatError, match="more than one"):
        mn.load_native(tmp_path)


def test_tied_embeddings_still_write_output(tmp_path: Path) -> None:
    model = _model(tie_word_embeddings=True)
    mn.write_native(model, tmp_path)
    tensors = load_file(str(tmp_path / "consolidated.safetensors"))
    assert torch.equal(tensors["output.weight"], tensors["tok_embeddings.weight"])  # vLLM's DeepSeek never ties
    assert json.loads((tmp_path / "params.json").read_text())["tied_embeddings"] is True
    loaded = mn.load_native(tmp_path, torch.float32)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(_logits(model), _logits(loaded))


def test_dtype_is_kept_or_converted(tmp_path: Path) -> None:
    mn.write_native(_model().to(torch.bfloat16), tmp_path)
    assert next(mn.load_native(tmp_path).parameters()).dtype == torch.bfloat16
    assert next(mn.load_native(tmp_path, torch.float32).parameters()).dtype == torch.float32


def test_mla_norms_take_norm_eps_as_vllm_does(tmp_path: Path) -> None:
    model = _model(rms_norm_eps=1e-5)
    with pytest.raises(mn.NativeFormatError, match="q_a_layernorm"):  # transformers built them with 1e-6
        mn.write_native(model, tmp_path)
    for layer in model.model.layers:
        layer.self_attn.q_a_layernorm.variance_epsilon = layer.self_attn.kv_a_layernorm.variance_epsilon = 1e-5
    mn.write_native(model, tmp_path)
    loaded = mn.load_native(tmp_path, torch.float32)
    assert loaded.model.layers[1].self_attn.kv_a_layernorm.variance_epsilon == 1e-5
    assert torch.equal(_logits(model), _logits(loaded))


# ---- params.json -----------------------------------------------------------------------------------------


def _config(**overrides: Any) -> Mistral4Config:
    return Mistral4Config(**{**_text_config_kwargs(), "first_k_dense_replace": 1, **overrides})


def _rope(**changes: Any) -> dict[str, Any]:
    rope = {**_text_config_kwargs()["rope_parameters"], **changes}
    return {k: v for k, v in rope.items() if v is not None}


ROPE_VARIANTS = {
    "yarn": _rope(),
    "yarn-no-scale": _rope(mscale=None, mscale_all_dim=None, attention_factor=1.0),
    "default": {"rope_type": "default", "rope_theta": 1e6, "original_max_position_embeddings": 4096,
                "llama_4_scaling_beta": 0.2},
}


@pytest.mark.parametrize("rope", ROPE_VARIANTS.values(), ids=ROPE_VARIANTS.keys())
def test_params_and_config_round_trip(rope: dict[str, Any]) -> None:
    config = _config(rope_parameters=dict(rope))
    params = mn.params_from_config(config)
    again = mn.config_from_params(copy.deepcopy(params))
    assert mn.params_from_config(again) == params
    for key in ("hidden_size", "num_hidden_layers", "intermediate_size", "moe_intermediate_size", "n_routed_experts",
                "n_shared_experts", "num_experts_per_tok", "first_k_dense_replace", "q_lora_rank", "kv_lora_rank",
                "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim", "rms_norm_eps", "vocab_size",
                "max_position_embeddings", "tie_word_embeddings", "routed_scaling_factor"):
        assert getattr(again, key) == getattr(config, key), key
    kept = {k: v for k, v in config.rope_parameters.items() if k != "type"}
    if kept["rope_type"] == "default":  # transformers' default rope cannot run MLA: yarn with factor 1 can
        kept.update(rope_type="yarn", factor=1.0)
    assert again.rope_parameters == kept


def test_plain_rope_runs_as_plain_rope(tmp_path: Path) -> None:
    params = mn.params_from_config(_config(rope_parameters=dict(ROPE_VARIANTS["default"])))
    assert "yarn" not in params
    model = Mistral4ForCausalLM(mn.config_from_params(params)).eval()
    rope = model.config.qk_rope_head_dim
    plain = 1.0 / (1e6 ** (torch.arange(0, rope, 2, dtype=torch.float) / rope))
    assert torch.allclose(model.model.rotary_emb.inv_freq, plain) and model.model.rotary_emb.attention_scaling == 1
    assert model.model.layers[0].self_attn.scaling == model.config.qk_head_dim ** -0.5
    assert torch.isfinite(_logits(model)).all()


def test_yarn_without_scale_is_apply_scale_false() -> None:
    params = mn.params_from_config(_config(rope_parameters=dict(ROPE_VARIANTS["yarn-no-scale"])))
    assert params["yarn"]["apply_scale"] is False
    assert "apply_scale" not in mn.params_from_config(_config())["yarn"]


def test_a_dense_mla_model_is_dense_everywhere() -> None:
    params = mn.params_from_config(_config())
    del params["moe"]
    config = mn.config_from_params(params)
    assert config.first_k_dense_replace == config.num_hidden_layers == 2
    model = Mistral4ForCausalLM(config)
    assert all(type(layer.mlp).__name__ == "Mistral4MLP" for layer in model.model.layers)


def test_max_seq_len_bounds_the_context_as_in_vllm() -> None:
    params = {**mn.params_from_config(_config()), "max_seq_len": 4096}
    assert mn.config_from_params(params).max_position_embeddings == 4096
    del params["max_position_embeddings"], params["max_seq_len"]
    assert mn.config_from_params(params).max_position_embeddings == 128_000


def _broken(change: Any) -> dict[str, Any]:
    params = mn.params_from_config(_config())
    change(params)
    return params


REFUSED_PARAMS = {
    "vision": (lambda p: p.update(vision_encoder={"hidden_size": 32}), "vision encoder.*not supported yet"),
    "multimodal": (lambda p: p.update(multimodal={"vision_encoder_args": {"hidden_size": 32}}), "not supported yet"),
    "quantized": (lambda p: p.update(quantization={"qformat_weight": "fp8_e4m3"}), "quantized"),
    "no MLA": (lambda p: p.pop("qk_nope_head_dim"), "only Mistral 4"),
    "no llama-4": (lambda p: p.pop("llama_4_scaling"), "llama_4_scaling"),
    "two lengths": (lambda p: p["llama_4_scaling"].update(original_max_position_embeddings=4096), "original length"),
    "groups": (lambda p: p["moe"].update(num_expert_groups=2, num_expert_groups_per_tok=1), "group-limited"),
    "every 2nd": (lambda p: p["moe"].update(route_every_n=2), "route_every_n"),
    "no shared": (lambda p: p["moe"].update(num_shared_experts=0), "Mixtral"),
    "yarn key": (lambda p: p["yarn"].update(temperature=1.0), "unknown yarn keys"),
}


@pytest.mark.parametrize("change,why", REFUSED_PARAMS.values(), ids=REFUSED_PARAMS.keys())
def test_params_without_a_transformers_equivalent_are_refused(change: Any, why: str) -> None:
    with pytest.raises(mn.NativeFormatError, match=why):
        mn.config_from_params(_broken(change))


REFUSED_CONFIGS = {
    "mscale": ({"rope_parameters": _rope(mscale=0.707, mscale_all_dim=0.707)}, "mscale_all_dim"),
    "cos scale": ({"rope_parameters": _rope(mscale=None, mscale_all_dim=None)}, "cos/sin"),
    "groups": ({"n_group": 2, "topk_group": 1}, "group-limited"),
    "gqa": ({"num_key_value_heads": 2}, "num_key_value_heads"),
    "no q lora": ({"q_lora_rank": None}, "q_lora_rank"),
    "rope type": ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4,
                                       "original_max_position_embeddings": 8192, "llama_4_scaling_beta": 0.1}},
                  "rope type"),
}


@pytest.mark.parametrize("overrides,why", REFUSED_CONFIGS.values(), ids=REFUSED_CONFIGS.keys())
def test_configs_without_a_native_equivalent_are_refused(overrides: dict[str, Any], why: str) -> None:
    with pytest.raises(mn.NativeFormatError, match=why):
        mn.params_from_config(_config(**overrides))


def test_unknown_or_missing_tensors_are_refused(tmp_path: Path) -> None:
    model = _model()
    native = mn.to_native(model.state_dict(), model.config)
    with pytest.raises(mn.NativeFormatError, match="unknown tensor"):
        mn.from_native({**native, "layers.1.gate.bias": torch.zeros(4)}, model.config)
    without = {k: v for k, v in native.items() if k != "layers.1.experts.3.w2.weight"}
    with pytest.raises(mn.NativeFormatError, match="w2 of experts"):
        mn.from_native(without, model.config)
    mn.write_native(model, tmp_path)
    tensors = load_file(str(tmp_path / "consolidated.safetensors"))
    del tensors["layers.0.feed_forward.w3.weight"]
    save_file(tensors, str(tmp_path / "consolidated.safetensors"))
    with pytest.raises(mn.NativeFormatError, match="do not fit params.json"):
        mn.load_native(tmp_path)


def test_nothing_heavy_at_import() -> None:
    code = ("import sys, unimodel.models.mistral_native; "
            "print(any(m in sys.modules for m in ('torch', 'transformers', 'safetensors')))")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"


# ---- against vLLM's own reader ---------------------------------------------------------------------------

#: the keys vLLM 0.32's adapt_config_dict maps (transformers_utils/configs/mistral.py), for when it is absent
VLLM_KEYS = {"dim", "n_layers", "hidden_dim", "n_heads", "n_kv_heads", "norm_eps", "vocab_size", "rope_theta",
             "head_dim", "q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim",
             "max_position_embeddings", "tied_embeddings", "moe", "llama_4_scaling", "yarn"}
VLLM_MOE_KEYS = {"num_experts", "num_experts_per_tok", "expert_hidden_dim", "num_shared_experts",
                 "first_k_dense_replace", "route_every_n", "routed_scale", "num_expert_groups",
                 "num_expert_groups_per_tok"}


def test_params_use_only_the_keys_vllm_reads() -> None:
    for rope in ROPE_VARIANTS.values():
        params = mn.params_from_config(_config(rope_parameters=dict(rope)))
        assert set(params) <= VLLM_KEYS and set(params["moe"]) == VLLM_MOE_KEYS
        assert set(params["llama_4_scaling"]) == {"original_max_position_embeddings", "beta"}
        assert set(params.get("yarn", {})) <= {"factor", "original_max_position_embeddings", "beta", "alpha",
                                               "apply_scale"}


def _vllm_package() -> Path | None:
    """vLLM's package directory: this venv's, else that of the vLLM venv (``$UNIMODEL_VLLM_PYTHON``, else
    ``.venv-vllm`` at the repository root: ``bash .ci/vllm-venv`` makes it)."""
    spec = importlib.util.find_spec("vllm")
    if spec is not None and spec.origin:
        return Path(spec.origin).parent
    repo = Path(__file__).resolve().parents[3]
    explicit = os.environ.get("UNIMODEL_VLLM_PYTHON")
    venvs = [Path(explicit).parent.parent] if explicit else []
    for venv in [*venvs, repo / ".venv-vllm"]:
        found = sorted(venv.glob("lib/python3*/site-packages/vllm"))
        if found:
            return found[-1]
    return None


@pytest.fixture()
def vllm_adapt(monkeypatch: pytest.MonkeyPatch) -> Any:
    """vLLM's ``adapt_config_dict``, read from its own file; the module needs nothing of vLLM but a logger."""
    package = _vllm_package()
    source = package / "transformers_utils" / "configs" / "mistral.py" if package else None
    if source is None or not source.is_file():
        reason = "no vLLM install to read transformers_utils/configs/mistral.py from"
        if os.environ.get("UNIMODEL_REQUIRE_VLLM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    if importlib.util.find_spec("vllm") is None:
        stub = types.ModuleType("vllm")
        stub.__path__ = []  # type: ignore[attr-defined]
        logger = types.ModuleType("vllm.logger")
        logger.init_logger = logging.getLogger  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "vllm", stub)
        monkeypatch.setitem(sys.modules, "vllm.logger", logger)
    spec = importlib.util.spec_from_file_location("_vllm_mistral_config", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.adapt_config_dict


@pytest.mark.vllm
@pytest.mark.parametrize("rope", ROPE_VARIANTS.values(), ids=ROPE_VARIANTS.keys())
def test_vllm_reads_params_as_the_same_model(vllm_adapt: Any, rope: dict[str, Any]) -> None:
    config = _config(rope_parameters=dict(rope), routed_scaling_factor=2.5, n_group=2, topk_group=2)
    params = mn.params_from_config(config)
    vllm = vars(vllm_adapt(copy.deepcopy(params), {}))  # a plain PreTrainedConfig: its attributes are the data
    assert vllm["architectures"] == ["MistralLarge3ForCausalLM"] and vllm["model_type"] == "deepseek_v3"
    assert vllm["moe"] == {}  # vLLM used every moe key we wrote
    same = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "rms_norm_eps",
            "vocab_size", "q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim",
            "max_position_embeddings", "tie_word_embeddings", "n_routed_experts", "num_experts_per_tok",
            "moe_intermediate_size", "n_shared_experts", "first_k_dense_replace", "routed_scaling_factor",
            "n_group", "topk_group", "norm_topk_prob", "hidden_act")
    assert {k: vllm.get(k) for k in same} == {k: getattr(config, k) for k in same}
    assert (vllm["moe_layer_freq"], vllm["scoring_func"], vllm["topk_method"]) == (1, "softmax", None)
    ours = config.rope_parameters
    assert vllm["llama_4_scaling"] == {"original_max_position_embeddings": ours["original_max_position_embeddings"],
                                       "beta": ours["llama_4_scaling_beta"]}
    if ours["rope_type"] == "yarn":
        theirs = vllm["rope_parameters"]
        assert theirs["rope_type"] == "yarn" and theirs["mscale_all_dim"] == 1
        for key in ("rope_theta", "factor", "original_max_position_embeddings", "beta_fast", "beta_slow",
                    "attention_factor"):
            assert theirs.get(key) == ours.get(key), key
    else:
        assert "yarn" not in params and "rope_parameters" not in vllm  # vLLM makes plain rope of rope_theta
        assert vllm["rope_theta"] == ours["rope_theta"]
