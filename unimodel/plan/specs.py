"""A model's shape, read from its ``config.json``: parameters by part, total and active, and its attention.

Counted from the architecture (MLA or GQA attention, dense or MoE MLP with routed and shared experts,
embeddings, vision tower and projector), never typed in. Each part also says whether FP8/NVFP4/INT4
checkpoints quantize it (linear layers of the language model) or keep it in BF16 (embeddings, lm_head,
norms, router, vision tower, projector), and whether tensor parallelism splits it or every rank holds a copy
(vLLM replicates MLA's down-projections ``q_a_proj``/``kv_a_proj_with_mqa``, norms and the router).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from unimodel.plan.builtin import BUILTIN


class SpecError(ValueError):
    """A model or config that cannot be planned (one clear line for the CLI)."""


@dataclass(frozen=True)
class Part:
    name: str
    params: int
    quantized: bool  # low precision in a quantized checkpoint
    split: bool  # sharded across tensor-parallel ranks (False: replicated on each)
    active: float = 1.0  # fraction used for each token (routed experts: k / n); 0 for the vision side


@dataclass(frozen=True)
class ModelSpec:
    name: str
    parts: tuple[Part, ...]
    attention: Literal["mla", "gqa"]
    layers: int
    attention_heads: int
    max_context: int
    kv_lora_rank: int = 0
    qk_rope_head_dim: int = 0
    kv_heads: int = 0
    head_dim: int = 0
    experts: int = 0
    experts_per_token: int = 0
    expert_params: int = 0  # one routed expert, all layers
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def total_params(self) -> int:
        return sum(p.params for p in self.parts)

    @property
    def active_params(self) -> int:
        return int(sum(p.params * p.active for p in self.parts))

    def part(self, name: str) -> Part:
        return next(p for p in self.parts if p.name == name)


def load_config(model: str) -> tuple[str, dict[str, Any]]:
    """A built-in name, a checkpoint directory or config.json path, or a hub id (when the hub is reachable)."""
    if model in BUILTIN:
        return model, BUILTIN[model]
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            return path.parent.name, json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SpecError(f"cannot read {path}: {exc}") from exc
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise SpecError(f"'{model}' is not a built-in model ({', '.join(BUILTIN)}) nor a checkpoint with a "
                        "config.json")
    try:
        from huggingface_hub import hf_hub_download

        return model, json.loads(Path(hf_hub_download(model, "config.json")).read_text())
    except Exception as exc:  # the hub library raises many types; any of them means "not here"
        raise SpecError(f"'{model}' is not built in, not a local path, and the hub did not answer "
                        f"({type(exc).__name__}); pass --model PATH to a checkpoint") from exc


def spec_from_config(name: str, config: dict[str, Any]) -> ModelSpec:
    text = config.get("text_config") or config
    for key in ("hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads"):
        if not isinstance(text.get(key), int) or text[key] <= 0:
            raise SpecError(f"'{name}' is not a decoder language model: its config has no '{key}'")
    archs = " ".join(config.get("architectures") or [])
    if archs and not any(s in archs for s in ("CausalLM", "ConditionalGeneration", "LMHeadModel")):
        raise SpecError(f"'{name}' is not a decoder language model ({archs})")
    h, n_layers, heads = text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"]
    parts: list[Part] = []
    mla = bool(text.get("kv_lora_rank"))
    if mla:
        qr, kvr = text.get("q_lora_rank") or 0, text["kv_lora_rank"]
        rope, nope, v = text["qk_rope_head_dim"], text["qk_nope_head_dim"], text["v_head_dim"]
        parts += [
            Part("attention (split)", n_layers * ((qr * heads * (nope + rope) if qr else h * heads * (nope + rope))
                                                  + kvr * heads * (nope + v) + heads * v * h), True, True),
            Part("attention (replicated)", n_layers * ((h * qr if qr else 0) + h * (kvr + rope)), True, False),
            Part("norms", n_layers * (2 * h + qr + kvr) + h, False, False),
        ]
    else:
        kv, hd = text.get("num_key_value_heads") or heads, text.get("head_dim") or h // heads
        bias = (heads * hd + 2 * kv * hd) if text.get("attention_bias") else 0
        parts += [Part("attention", n_layers * (2 * h * heads * hd + 2 * h * kv * hd + bias), True, True),
                  Part("norms", n_layers * 2 * h + h, False, False)]
    experts = text.get("n_routed_experts") or text.get("num_local_experts") or 0
    if experts:
        k = text["num_experts_per_tok"]
        moe_inter = text.get("moe_intermediate_size") or text["intermediate_size"]
        dense_layers = text.get("first_k_dense_replace") or 0
        moe_layers = n_layers - dense_layers
        expert = 3 * h * moe_inter
        parts += [
            Part("routed experts", moe_layers * experts * expert, True, True, k / experts),
            Part("shared experts", moe_layers * (text.get("n_shared_experts") or 0) * expert, True, True),
            Part("router", moe_layers * h * experts, False, False),
        ]
        if dense_layers:
            parts.append(Part("dense MLP", dense_layers * 3 * h * text["intermediate_size"], True, True))
    else:
        parts.append(Part("MLP", n_layers * 3 * h * text["intermediate_size"], True, True))
    vocab = text["vocab_size"]
    tied = text.get("tie_word_embeddings", config.get("tie_word_embeddings", False))
    parts.append(Part("embeddings", vocab * h, False, True))
    if not tied:
        parts.append(Part("lm_head", vocab * h, False, True))
    parts += _vision_parts(config, h)
    return ModelSpec(
        name=name, parts=tuple(p for p in parts if p.params), attention="mla" if mla else "gqa",
        layers=n_layers, attention_heads=heads,
        max_context=int(text.get("max_position_embeddings") or config.get("max_position_embeddings") or 0),
        kv_lora_rank=text.get("kv_lora_rank") or 0, qk_rope_head_dim=text.get("qk_rope_head_dim") or 0,
        kv_heads=0 if mla else (text.get("num_key_value_heads") or heads),
        head_dim=0 if mla else (text.get("head_dim") or h // heads),
        experts=experts, experts_per_token=text.get("num_experts_per_tok") or 0,
        expert_params=(n_layers - (text.get("first_k_dense_replace") or 0)) * 3 * h * (
            text.get("moe_intermediate_size") or text["intermediate_size"]) if experts else 0,
    )


def _vision_parts(config: dict[str, Any], text_hidden: int) -> list[Part]:
    vision = config.get("vision_config")
    if not vision:
        return []
    vh, vi, vl = vision["hidden_size"], vision["intermediate_size"], vision["num_hidden_layers"]
    patch = vision.get("patch_size", 14)
    merge = config.get("spatial_merge_size") or vision.get("spatial_merge_size") or 1
    tower = vl * (4 * vh * vh + 3 * vh * vi + 2 * vh) + vision.get("num_channels", 3) * patch * patch * vh + vh
    out = vision.get("out_hidden_size") or text_hidden
    projector = (vh * merge * merge) * vh + vh + vh * out + out * out  # patch merger, norm, 2-layer MLP
    return [Part("vision tower", tower, False, True, 0.0), Part("projector", projector, False, True, 0.0)]


def load_spec(model: str) -> ModelSpec:
    name, config = load_config(model)
    return spec_from_config(name, config)
