"""Mistral's native checkpoint format ↔ transformers' ``Mistral4ForCausalLM`` (MLA attention, MoE, shared expert).

The native format is a directory with ``params.json``, ``consolidated.safetensors`` (or several
``consolidated*.safetensors``) and ``tekken.json``, and no ``config.json``: what ``vllm serve --config-format
mistral --load-format mistral`` loads, and what Mistral Small 4's recipe serves. The ground truth is vLLM 0.32:
``transformers_utils/configs/mistral.py`` (``params.json`` → an HF-style config: an MLA model with a shared
expert becomes ``MistralLarge3ForCausalLM``, i.e. DeepSeek-V3 with softmax routing and no correction bias) and
``model_executor/models/mistral_large_3.py`` (the tensor names). Transformers' own converter
(``convert_mistral4_weight_to_hf.py``) agrees on every name below.

Tensors, per layer ``N`` (native → transformers, under ``model.layers.N.``):
``attention.wq_a/q_a_norm/wq_b/wkv_a_with_mqa/kv_a_norm/wkv_b/wo`` → ``self_attn.q_a_proj/q_a_layernorm/q_b_proj/
kv_a_proj_with_mqa/kv_a_layernorm/kv_b_proj/o_proj``; ``attention_norm``/``ffn_norm`` → ``input_layernorm``/
``post_attention_layernorm``; dense layers ``feed_forward.w1/w2/w3`` → ``mlp.gate_proj/down_proj/up_proj``;
MoE layers ``gate`` → ``mlp.gate``, ``shared_experts.w1/w2/w3`` → ``mlp.shared_experts.gate_proj/down_proj/
up_proj``, and ``experts.E.w1/w3`` ([I, H] each) → one fused ``mlp.experts.gate_up_proj`` [E, 2I, H] (gate
rows first), ``experts.E.w2`` [H, I] → ``mlp.experts.down_proj`` [E, H, I]. Outside the layers:
``tok_embeddings`` → ``model.embed_tokens``, ``norm`` → ``model.norm``, ``output`` → ``lm_head``.

Where the two engines differ, and what this module does so that both compute the same function:

* **Rope layout.** vLLM's DeepSeek attention rotates adjacent pairs (``is_neox_style=False``) and its
  ``mistral`` load format permutes nothing; transformers does the same with ``rope_interleave=True``. So
  :func:`config_from_params` sets ``rope_interleave=True`` and no weight is permuted. A transformers model with
  ``rope_interleave=False`` (rotate-half layout) has its rope rows of ``q_b_proj`` and ``kv_a_proj_with_mqa``
  permuted into the pair layout by :func:`to_native` (and back by :func:`from_native` for such a config).
* **Yarn.** vLLM maps ``yarn {factor, original_max_position_embeddings, beta, alpha, apply_scale}`` to
  ``factor, original_max_position_embeddings, beta_fast, beta_slow`` with ``mscale_all_dim`` fixed at 1 (``mscale``
  stays 1): cos/sin unscaled and the softmax scale times ``mscale(factor)²``; ``apply_scale: false`` is neither.
  In transformers that is ``mscale = mscale_all_dim = 1`` (resp. ``attention_factor = 1`` and no
  ``mscale_all_dim``). Other mscale settings have no native equivalent and are refused, as is ``truncate=False``.
* **Plain rope** (no ``yarn`` block) becomes yarn with factor 1 in transformers (the same frequencies and no
  scale; transformers' ``default`` rope ignores ``partial_rotary_factor``, so it cannot run MLA's partial rope,
  and logs a warning about the factor), and yarn with factor 1 is written as plain rope.
* **Llama-4 attention scaling.** Native ``llama_4_scaling {original_max_position_embeddings, beta}`` (vLLM
  requires it for this architecture); transformers reads ``rope_parameters["llama_4_scaling_beta"]`` and the
  *yarn* ``original_max_position_embeddings``, so the two lengths must be equal.
* **Router.** Both: softmax scores, top-k renormalised (``norm_topk_prob``, which vLLM always sets), times
  ``routed_scale``; neither has an ``e_score_correction_bias``. With expert groups, vLLM ranks a group by its
  best expert and transformers by its best two, so group-limited routing (``num_expert_groups_per_tok <
  num_expert_groups``) is refused. vLLM's ``route_every_n`` has no transformers equivalent: only 1 is accepted.
* **MLA norms.** transformers builds ``q_a_layernorm``/``kv_a_layernorm`` with eps 1e-6 whatever the config;
  vLLM uses ``norm_eps``. :func:`load_native` sets those two norms to ``norm_eps`` (vLLM's function), and
  :func:`write_native` refuses a model whose norms disagree with its ``rms_norm_eps``.
* **Heads.** MLA gives every head its own key, and vLLM ignores ``n_kv_heads`` for it: the config gets
  ``num_key_value_heads = n_heads``. A model with ``num_key_value_heads != num_attention_heads`` is refused.
* **Tied embeddings.** vLLM's DeepSeek never ties ``lm_head``, so :func:`to_native` always writes ``output``
  (a copy of the embeddings when tied) and keeps ``tied_embeddings`` as the model says.
* **Length.** ``max_position_embeddings`` (vLLM's default 128,000), or ``max_seq_len`` when smaller (vLLM takes
  the smaller of the two); a missing ``rope_theta`` is 10,000 (transformers' default).
* **A dense MLA model** (no ``moe``) is what vLLM makes of it: every layer a dense ``feed_forward``.
* Refused: a vision or audio encoder (not supported yet), quantization, sliding windows, models without
  ``q_lora_rank`` or a shared expert (vLLM loads those as other architectures), non-``silu`` activations, biases.

Hand-written because no library does this conversion in either direction (transformers' converter is a
script, one way, in its repository only). Nothing runs at import; torch, safetensors and transformers are
imported inside the functions.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import Mistral4Config, Mistral4ForCausalLM

PARAMS_FILE = "params.json"
WEIGHTS_FILE = "consolidated.safetensors"
WEIGHTS_GLOB = "consolidated*.safetensors"

#: transformers names under ``model.layers.N.`` → native names under ``layers.N.``
_LAYER_NAMES: dict[str, str] = {
    "self_attn.q_a_proj.weight": "attention.wq_a.weight",
    "self_attn.q_a_layernorm.weight": "attention.q_a_norm.weight",
    "self_attn.q_b_proj.weight": "attention.wq_b.weight",
    "self_attn.kv_a_proj_with_mqa.weight": "attention.wkv_a_with_mqa.weight",
    "self_attn.kv_a_layernorm.weight": "attention.kv_a_norm.weight",
    "self_attn.kv_b_proj.weight": "attention.wkv_b.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "mlp.gate.weight": "gate.weight",
    "mlp.shared_experts.gate_proj.weight": "shared_experts.w1.weight",
    "mlp.shared_experts.down_proj.weight": "shared_experts.w2.weight",
    "mlp.shared_experts.up_proj.weight": "shared_experts.w3.weight",
}
_NATIVE_LAYER_NAMES = {v: k for k, v in _LAYER_NAMES.items()}
_TOP_NAMES = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
              "lm_head.weight": "output.weight"}
_NATIVE_TOP_NAMES = {v: k for k, v in _TOP_NAMES.items()}
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_NATIVE_LAYER = re.compile(r"layers\.(\d+)\.(.+)")
_NATIVE_EXPERT = re.compile(r"experts\.(\d+)\.(w[123])\.weight")
_YARN_KEYS = {"factor", "original_max_position_embeddings", "beta", "alpha", "apply_scale"}


class NativeFormatError(ValueError):
    """The checkpoint or model has something the native format (or this conversion) cannot carry."""


def is_native_checkpoint(directory: Path) -> bool:
    """A directory in Mistral's format only: ``params.json`` and no ``config.json``."""
    return (directory / PARAMS_FILE).is_file() and not (directory / "config.json").is_file()


def read_params(directory: Path) -> dict[str, Any]:
    try:
        params = json.loads((Path(directory) / PARAMS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NativeFormatError(f"cannot read {PARAMS_FILE}: {exc}") from exc
    if not isinstance(params, dict):
        raise NativeFormatError(f"{PARAMS_FILE} is not a JSON object")
    return params


# ---- params.json ↔ Mistral4Config ---------------------------------------------------------------------------


def params_from_config(config: Mistral4Config) -> dict[str, Any]:
    """The ``params.json`` (as a dict) of a ``Mistral4Config``, in the keys vLLM's ``adapt_config_dict`` reads."""
    c = config
    nope, rope = int(c.qk_nope_head_dim), int(c.qk_rope_head_dim)
    _require(c.q_lora_rank is not None, "q_lora_rank is None: vLLM's native loader has no plain q projection")
    _require(c.num_key_value_heads == c.num_attention_heads,
             "num_key_value_heads != num_attention_heads: MLA gives every head its own key")
    _require(c.hidden_act == "silu", f"hidden_act {c.hidden_act!r}: vLLM's DeepSeek MoE runs silu only")
    _require(not c.attention_bias, "attention_bias: the native MLA layers have no biases")
    _require(c.n_shared_experts >= 1, "no shared expert: vLLM would load it as a Mixtral")
    _require(bool(c.norm_topk_prob), "norm_topk_prob=False: vLLM always renormalises the top-k weights")
    _require(c.n_group in (None, 1) or c.topk_group == c.n_group,
             "group-limited routing: vLLM and transformers rank expert groups differently")
    rp: dict[str, Any] = dict(c.rope_parameters or {})
    _require(math.isclose(rp.get("partial_rotary_factor", rope / (nope + rope)), rope / (nope + rope)),
             "partial_rotary_factor other than qk_rope_head_dim / head_dim")
    _require(rp.get("llama_4_scaling_beta") is not None and rp.get("original_max_position_embeddings"),
             "rope_parameters need llama_4_scaling_beta and original_max_position_embeddings")
    original = int(rp["original_max_position_embeddings"])
    params: dict[str, Any] = {
        "dim": c.hidden_size, "n_layers": c.num_hidden_layers, "hidden_dim": c.intermediate_size,
        "head_dim": nope + rope, "n_heads": c.num_attention_heads, "n_kv_heads": c.num_key_value_heads,
        "norm_eps": c.rms_norm_eps, "vocab_size": c.vocab_size, "rope_theta": float(rp["rope_theta"]),
        "q_lora_rank": c.q_lora_rank, "kv_lora_rank": c.kv_lora_rank, "qk_rope_head_dim": rope,
        "qk_nope_head_dim": nope, "v_head_dim": c.v_head_dim, "max_position_embeddings": c.max_position_embeddings,
        "tied_embeddings": bool(c.tie_word_embeddings),
        "moe": {
            "num_experts": c.n_routed_experts, "num_experts_per_tok": c.num_experts_per_tok,
            "expert_hidden_dim": c.moe_intermediate_size, "num_shared_experts": c.n_shared_experts,
            "first_k_dense_replace": c.first_k_dense_replace or 0, "route_every_n": 1,
            "routed_scale": float(c.routed_scaling_factor), "num_expert_groups": c.n_group or 1,
            "num_expert_groups_per_tok": c.topk_group or 1,
        },
        "llama_4_scaling": {"original_max_position_embeddings": original, "beta": float(rp["llama_4_scaling_beta"])},
    }
    rope_type = rp.get("rope_type", rp.get("type", "default"))
    if rope_type == "yarn" and float(rp["factor"]) != 1.0:
        params["yarn"] = _yarn_params(rp)
    elif rope_type == "yarn":  # factor 1: plain rope (no yarn block), whatever the other yarn keys say
        _require(rp.get("attention_factor") in (None, 1.0), "yarn factor 1 with an attention_factor")
    else:
        _require(rope_type == "default", f"rope type {rope_type!r}: the native format knows default and yarn")
    return params


def _yarn_params(rp: dict[str, Any]) -> dict[str, Any]:
    _require(rp.get("truncate", True), "yarn truncate=False: vLLM always truncates the correction range")
    factor = float(rp["factor"])
    # what transformers computes: cos/sin times `cos_scale`, the softmax scale times `softmax_scale`
    mscale, mscale_all_dim, attention_factor = rp.get("mscale"), rp.get("mscale_all_dim"), rp.get("attention_factor")
    if attention_factor is not None:
        cos_scale = float(attention_factor)
    elif mscale and mscale_all_dim:
        cos_scale = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
    else:
        cos_scale = yarn_mscale(factor, 1.0)
    softmax_scale = yarn_mscale(factor, mscale_all_dim) ** 2 if mscale_all_dim else 1.0
    yarn: dict[str, Any] = {
        "factor": factor, "original_max_position_embeddings": int(rp["original_max_position_embeddings"]),
        "beta": float(rp.get("beta_fast") or 32.0), "alpha": float(rp.get("beta_slow") or 1.0),
    }
    _require(math.isclose(cos_scale, 1.0), "yarn scales cos/sin: vLLM's native yarn never does")
    if math.isclose(softmax_scale, 1.0) and not math.isclose(yarn_mscale(factor, 1.0), 1.0):
        yarn["apply_scale"] = False
    else:
        _require(math.isclose(softmax_scale, yarn_mscale(factor, 1.0) ** 2),
                 "yarn mscale_all_dim other than 1: vLLM's native yarn fixes it at 1")
    return yarn


def config_from_params(params: dict[str, Any]) -> Mistral4Config:
    """The ``Mistral4Config`` that computes what vLLM computes for this ``params.json``."""
    from transformers import Mistral4Config

    p = params
    _require(not ((p.get("multimodal") or {}).get("vision_encoder_args") or p.get("vision_encoder")),
             "a vision encoder: native checkpoints with one are not supported yet (text models only)")
    _require(not ((p.get("multimodal") or {}).get("whisper_model_args")), "an audio encoder: not supported")
    _require(not p.get("quantization"), "quantized weights: not supported yet")
    _require(not p.get("sliding_window"), "a sliding window: Mistral 4 has none")
    _require(p.get("model_type", "transformer") == "transformer", f"model_type {p.get('model_type')!r}")
    _require(p.get("activation", "silu") == "silu", f"activation {p.get('activation')!r}: only silu")
    for key in ("dim", "n_layers", "hidden_dim", "n_heads", "norm_eps", "vocab_size", "q_lora_rank",
                "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"):
        _require(p.get(key) is not None, f"no {key!r}: only Mistral 4 (MLA) native checkpoints are supported")
    scaling = p.get("llama_4_scaling") or {}
    _require("original_max_position_embeddings" in scaling and "beta" in scaling,
             "no llama_4_scaling {original_max_position_embeddings, beta}: vLLM requires it for this model")
    nope, rope = int(p["qk_nope_head_dim"]), int(p["qk_rope_head_dim"])
    # plain rope is yarn with factor 1 (the same frequencies, no scale): transformers' default rope ignores
    # partial_rotary_factor, so it cannot run MLA's partial rope
    rope_parameters: dict[str, Any] = {"rope_type": "yarn", "rope_theta": float(p.get("rope_theta") or 10000.0),
                                       "factor": 1.0}
    if p.get("yarn"):
        yarn = p["yarn"]
        _require(set(yarn) <= _YARN_KEYS, f"unknown yarn keys {sorted(set(yarn) - _YARN_KEYS)}")
        _require("factor" in yarn and "original_max_position_embeddings" in yarn,
                 "yarn needs factor and original_max_position_embeddings")
        _require(int(yarn["original_max_position_embeddings"]) == int(scaling["original_max_position_embeddings"]),
                 "yarn and llama_4_scaling name different original lengths; transformers has one")
        rope_parameters.update(rope_type="yarn", factor=float(yarn["factor"]),
                               beta_fast=float(yarn.get("beta", 32.0)), beta_slow=float(yarn.get("alpha", 1.0)))
        if yarn.get("apply_scale", True):
            rope_parameters.update(mscale=1.0, mscale_all_dim=1.0)
        else:
            rope_parameters["attention_factor"] = 1.0
    rope_parameters.update(original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
                           llama_4_scaling_beta=float(scaling["beta"]), partial_rotary_factor=rope / (nope + rope))
    moe = p.get("moe")
    if moe:
        _require((moe.get("num_shared_experts") or 0) > 0, "a MoE without shared experts: vLLM loads it as Mixtral")
        for key in ("num_experts", "num_experts_per_tok", "expert_hidden_dim"):
            _require(moe.get(key) is not None, f"moe has no {key!r}")
        _require(moe.get("route_every_n", 1) == 1, "moe.route_every_n other than 1: transformers has no equivalent")
        groups, per_tok = moe.get("num_expert_groups", 1), moe.get("num_expert_groups_per_tok", 1)
        _require(groups == 1 or per_tok == groups,
                 "group-limited routing: vLLM and transformers rank expert groups differently")
        moe_kwargs = {"n_routed_experts": moe["num_experts"], "num_experts_per_tok": moe["num_experts_per_tok"],
                      "moe_intermediate_size": moe["expert_hidden_dim"], "n_shared_experts": moe["num_shared_experts"],
                      "first_k_dense_replace": moe.get("first_k_dense_replace", 0),
                      "routed_scaling_factor": float(moe.get("routed_scale", 1.0)), "n_group": groups,
                      "topk_group": per_tok}
    else:  # vLLM's own stand-in for a dense MLA model: one expert, every layer dense
        moe_kwargs = {"n_routed_experts": 1, "num_experts_per_tok": 1, "moe_intermediate_size": p["hidden_dim"],
                      "n_shared_experts": 1, "first_k_dense_replace": p["n_layers"]}
    max_len = int(p.get("max_position_embeddings") or 128_000)
    if p.get("max_seq_len"):
        max_len = min(max_len, int(p["max_seq_len"]))
    return Mistral4Config(
        hidden_size=p["dim"], num_hidden_layers=p["n_layers"], intermediate_size=p["hidden_dim"],
        num_attention_heads=p["n_heads"], num_key_value_heads=p["n_heads"], rms_norm_eps=float(p["norm_eps"]),
        vocab_size=p["vocab_size"], max_position_embeddings=max_len,
        tie_word_embeddings=bool(p.get("tied_embeddings", False)), q_lora_rank=p["q_lora_rank"],
        kv_lora_rank=p["kv_lora_rank"], qk_rope_head_dim=rope, qk_nope_head_dim=nope, v_head_dim=p["v_head_dim"],
        rope_parameters=rope_parameters, rope_interleave=True, norm_topk_prob=True, hidden_act="silu",
        attention_bias=False, **moe_kwargs,
    )


# ---- tensors --------------------------------------------------------------------------------------------------


def to_native(state_dict: dict[str, torch.Tensor], config: Mistral4Config) -> dict[str, torch.Tensor]:
    """transformers' tensors → native tensors (experts split per expert, rope rows in pair layout)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        if name in _TOP_NAMES:
            out[_TOP_NAMES[name]] = tensor
            continue
        match = _HF_LAYER.fullmatch(name)
        if match is None:
            raise NativeFormatError(f"no native name for {name!r}")
        layer, rest = match.groups()
        if rest == "mlp.experts.gate_up_proj":
            inter = tensor.shape[1] // 2
            for e in range(tensor.shape[0]):
                out[f"layers.{layer}.experts.{e}.w1.weight"] = tensor[e, :inter].clone()
                out[f"layers.{layer}.experts.{e}.w3.weight"] = tensor[e, inter:].clone()
        elif rest == "mlp.experts.down_proj":
            for e in range(tensor.shape[0]):
                out[f"layers.{layer}.experts.{e}.w2.weight"] = tensor[e].clone()
        elif rest in _LAYER_NAMES:
            out[f"layers.{layer}.{_LAYER_NAMES[rest]}"] = _rope_layout(rest, tensor, config, to_pairs=True)
        else:
            raise NativeFormatError(f"no native name for {name!r}")
    if "output.weight" not in out and "tok_embeddings.weight" in out:  # vLLM's DeepSeek never ties lm_head
        out["output.weight"] = out["tok_embeddings.weight"].clone()
    elif "output.weight" in out and "tok_embeddings.weight" in out and _same_memory(
            out["output.weight"], out["tok_embeddings.weight"]):  # tied: safetensors stores no shared tensors
        out["output.weight"] = out["output.weight"].clone()
    return out


def from_native(tensors: dict[str, torch.Tensor], config: Mistral4Config) -> dict[str, torch.Tensor]:
    """Native tensors → transformers' names (experts fused into 3-D tensors); strict about unknown names."""
    import torch

    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        if name in _NATIVE_TOP_NAMES:
            out[_NATIVE_TOP_NAMES[name]] = tensor
            continue
        match = _NATIVE_LAYER.fullmatch(name)
        if match is None:
            raise NativeFormatError(f"unknown tensor {name!r} in the native checkpoint")
        layer, rest = int(match[1]), match[2]
        expert = _NATIVE_EXPERT.fullmatch(rest)
        if expert is not None:
            experts.setdefault((layer, expert[2]), {})[int(expert[1])] = tensor
        elif rest in _NATIVE_LAYER_NAMES:
            hf = _NATIVE_LAYER_NAMES[rest]
            out[f"model.layers.{layer}.{hf}"] = _rope_layout(hf, tensor, config, to_pairs=False)
        else:
            raise NativeFormatError(f"unknown tensor {name!r} in the native checkpoint")
    n = int(config.n_routed_experts)
    for layer in sorted({layer for layer, _ in experts}):
        parts = {w: experts.get((layer, w), {}) for w in ("w1", "w2", "w3")}
        for w, found in parts.items():
            if sorted(found) != list(range(n)):
                raise NativeFormatError(f"layer {layer}: {w} of experts {sorted(found)}, expected 0..{n - 1}")
        base = f"model.layers.{layer}.mlp.experts"
        out[f"{base}.gate_up_proj"] = torch.stack(
            [torch.cat([parts["w1"][e], parts["w3"][e]], dim=0) for e in range(n)])
        out[f"{base}.down_proj"] = torch.stack([parts["w2"][e] for e in range(n)])
    if "lm_head.weight" not in out and config.tie_word_embeddings and "model.embed_tokens.weight" in out:
        out["lm_head.weight"] = out["model.embed_tokens.weight"]
    return out


def _rope_layout(name: str, tensor: torch.Tensor, config: Mistral4Config, *, to_pairs: bool) -> torch.Tensor:
    """Rows of the rope dims between transformers' rotate-half layout and the native pair layout (only for a
    config with ``rope_interleave=False``; with True both layouts are the native one)."""
    if config.rope_interleave or name not in ("self_attn.q_b_proj.weight", "self_attn.kv_a_proj_with_mqa.weight"):
        return tensor
    import torch

    rope = int(config.qk_rope_head_dim)
    if name == "self_attn.q_b_proj.weight":
        blocks = tensor.reshape(int(config.num_attention_heads), -1, tensor.shape[-1])  # [heads, nope + rope, in]
    else:
        blocks = tensor.reshape(1, -1, tensor.shape[-1])  # [1, kv_lora_rank + rope, in]
    head, rot = blocks[:, : blocks.shape[1] - rope], blocks[:, blocks.shape[1] - rope:]
    split = (2, rope // 2) if to_pairs else (rope // 2, 2)  # half-major ↔ pair-major
    rot = rot.reshape(rot.shape[0], *split, rot.shape[-1]).transpose(1, 2).reshape(rot.shape)
    return torch.cat((head, rot), dim=1).reshape(tensor.shape)


# ---- files ----------------------------------------------------------------------------------------------------


def write_native(model: Mistral4ForCausalLM, directory: Path) -> None:
    """Write ``params.json`` and ``consolidated.safetensors`` for ``model`` into ``directory`` (the caller writes
    ``tekken.json``)."""
    from safetensors.torch import save_file

    config = model.config
    for name, module in model.named_modules():
        if name.endswith(("q_a_layernorm", "kv_a_layernorm")) and not math.isclose(
                module.variance_epsilon, config.rms_norm_eps):
            raise NativeFormatError(f"{name} has eps {module.variance_epsilon}, rms_norm_eps is "
                                    f"{config.rms_norm_eps}: the native format has one norm_eps")
    params = params_from_config(config)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in to_native(model.state_dict(), config).items()}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / PARAMS_FILE).write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": "pt"})


def load_native(directory: Path, dtype: torch.dtype | None = None,
                report: Callable[[str, int, int], None] | None = None) -> Mistral4ForCausalLM:
    """A ``Mistral4ForCausalLM`` (on the CPU, eval mode) from a native checkpoint directory; ``dtype`` None keeps
    the stored one. Raises :class:`NativeFormatError` for what it cannot load. ``report(phase, done, total)`` is
    told of its progress: ``weights`` after each shard read (``done`` of ``total`` files), then ``convert``
    (0, 0) as the tensors become transformers' (the loader's progress log)."""
    import torch
    from safetensors import safe_open
    from transformers import GenerationConfig, Mistral4ForCausalLM
    from transformers.models.mistral4.modeling_mistral4 import Mistral4RotaryEmbedding

    directory = Path(directory)
    config = config_from_params(read_params(directory))
    files = sorted(directory.glob(WEIGHTS_GLOB))
    if not files:
        raise NativeFormatError(f"no {WEIGHTS_GLOB} in {directory}")
    tensors: dict[str, torch.Tensor] = {}
    for done, file in enumerate(files, 1):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                if key in tensors:
                    raise NativeFormatError(f"{key!r} is in more than one of {[p.name for p in files]}")
                tensors[key] = f.get_tensor(key)
        if report is not None:
            report("weights", done, len(files))
    if report is not None:
        report("convert", 0, 0)
    state = from_native(tensors, config)
    if dtype is None:
        dtype = state["model.embed_tokens.weight"].dtype if "model.embed_tokens.weight" in state else torch.bfloat16
    state = {k: v.to(dtype) for k, v in state.items()}
    with torch.device("meta"):
        model = Mistral4ForCausalLM(config)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:  # missing or unexpected names, wrong shapes
        raise NativeFormatError(f"the weights do not fit params.json: {exc}") from exc
    model.model.rotary_emb = Mistral4RotaryEmbedding(config)  # its buffers are not in the checkpoint
    if config.tie_word_embeddings:
        model.tie_weights()
    for name, module in model.named_modules():
        if name.endswith(("q_a_layernorm", "kv_a_layernorm")):
            module.variance_epsilon = config.rms_norm_eps  # vLLM's eps (transformers hard-codes 1e-6)
    meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta:
        raise NativeFormatError(f"not loaded from the checkpoint: {', '.join(meta[:5])}")
    if (directory / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(directory))
    model.config.dtype = dtype
    return model.eval()


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr())


def yarn_mscale(factor: float, mscale: float) -> float:
    """Yarn's attention scale for a context ``factor`` (DeepSeek's ``yarn_get_mscale``; 1 without scaling)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _require(ok: Any, why: str) -> None:
    if not ok:
        raise NativeFormatError(why)
