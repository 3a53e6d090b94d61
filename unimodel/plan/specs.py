"""A model's shape, read from its ``config.json``: parameters by part, total and active, and its attention.

Counted from the architecture (MLA or GQA attention, dense or MoE MLP with routed and shared experts,
embeddings, vision tower and projector), never typed in. Each part also says

- whether FP8/NVFP4/INT4 checkpoints quantize it (the linear layers of the language model) or keep it in
  BF16 (embeddings, lm_head, norms, router, vision tower, projector), and, for MLA attention, in which of
  those formats it stays BF16 all the same (``bf16_in``). That follows Mistral Small 4's published
  checkpoints: the NVFP4 one (``compressed-tensors``, made with llm-compressor) quantizes the MoE experts
  only, routed and shared, and keeps every attention projection in BF16; the FP8 ones keep the low-rank
  down-projections ``q_a_proj``/``kv_a_proj_with_mqa`` in BF16 (Mistral's FP8 ignore list for its MLA
  models: the 320-row ``kv_a_proj_with_mqa`` is not a multiple of the 128x128 FP8 block, and vLLM fuses
  ``q_a_proj`` with it). GQA models are quantized whole, as vLLM's online ``--quantization fp8`` does;
- whether tensor parallelism splits it or every rank holds a copy (vLLM replicates MLA's down-projections
  ``q_a_proj``/``kv_a_proj_with_mqa``, the norms and the router);
- which fraction of it each token uses (routed experts: k / n; the vision side: none, it runs at prefill).
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from unimodel.plan.builtin import BUILTIN


class SpecError(ValueError):
    """A model or config that cannot be planned (one clear line for the CLI)."""


@dataclass(frozen=True)
class Part:
    name: str
    params: int
    quantized: bool  # low precision in a quantized checkpoint (False: stays BF16)
    split: bool  # sharded across tensor-parallel ranks (False: replicated on each)
    active: float = 1.0  # fraction used for each token (routed experts: k / n); 0 for the vision side
    bf16_in: tuple[str, ...] = ()  # quantized, except in these weight formats, where checkpoints keep it BF16

    def stays_bf16(self, weights: str) -> bool:
        return not self.quantized or weights in self.bf16_in


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

    @property
    def total_params(self) -> int:
        return sum(p.params for p in self.parts)

    @property
    def active_params(self) -> int:
        """Parameters used for one text token, embeddings and lm_head included (the model cards' convention)."""
        return int(sum(p.params * p.active for p in self.parts))

    @property
    def vision(self) -> bool:
        return any(p.name == "vision tower" for p in self.parts)

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
        return path.parent.name, _read_config(path)
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise SpecError(f"'{model}' is not a built-in model ({', '.join(BUILTIN)}) nor a checkpoint with a "
                        "config.json")
    return model, _config_from_hub(model)


def _hub_reachable(timeout_s: float = 3.0) -> bool:
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _config_from_hub(model: str) -> dict[str, Any]:
    """The local hub cache first; the hub itself only when it answers (no minute of retries, no log spew)."""
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError as exc:
        raise SpecError(f"'{model}' is not built in nor a local path, and huggingface_hub is not installed; "
                        "pass --model PATH to a checkpoint") from exc
    cached = try_to_load_from_cache(model, "config.json", cache_dir=os.environ.get("HF_HUB_CACHE") or None)
    path: Optional[str] = cached if isinstance(cached, str) else None
    if path is None:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on") or not _hub_reachable():
            raise SpecError(f"'{model}' is not built in, not a local path, not in the hub cache, and the hub is "
                            "not reachable; pass --model PATH to a checkpoint")
        hub_log = logging.getLogger("huggingface_hub")
        level = hub_log.level
        hub_log.setLevel(logging.ERROR)
        try:
            path = hf_hub_download(model, "config.json", etag_timeout=10)
        except Exception as exc:  # the hub library raises many types; any of them means "not there"
            raise SpecError(f"'{model}': the hub has no config.json for it ({type(exc).__name__}); "
                            "pass --model PATH to a checkpoint") from exc
        finally:
            hub_log.setLevel(level)
    return _read_config(Path(path))


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SpecError(f"cannot read {path}: {' '.join(str(exc).split())}") from exc
    if not isinstance(config, dict):
        raise SpecError(f"{path} is not a model config (not a JSON object)")
    return config


def _decoder_text_config(name: str, config: dict[str, Any]) -> dict[str, Any]:
    text = config.get("text_config") or config.get("llm_config") or config
    archs = " ".join(config.get("architectures") or [])
    if config.get("is_encoder_decoder") or (archs and not any(
            s in archs for s in ("CausalLM", "ConditionalGeneration", "LMHeadModel"))):
        raise SpecError(f"'{name}' is not a decoder language model ({archs or 'encoder-decoder'})")
    for key in ("hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads"):
        value = text.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise SpecError(f"'{name}' is not a decoder language model: its config has no positive '{key}'")
    return text


def _tied(config: dict[str, Any], text: dict[str, Any]) -> bool:
    # transformers ties a wrapper's lm_head by the wrapper's own key when it has one
    if text is not config and "tie_word_embeddings" in config:
        return bool(config["tie_word_embeddings"])
    return bool(text.get("tie_word_embeddings", False))


def _attention_parts(text: dict[str, Any]) -> list[Part]:
    h, n_layers, heads = text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"]
    if text.get("kv_lora_rank"):  # MLA
        qr, kvr = text.get("q_lora_rank") or 0, text["kv_lora_rank"]
        rope, nope, v = text["qk_rope_head_dim"], text["qk_nope_head_dim"], text["v_head_dim"]
        q_up = qr * heads * (nope + rope) if qr else h * heads * (nope + rope)  # q_b_proj (or q_proj)
        return [
            Part("attention (split)", n_layers * (q_up + kvr * heads * (nope + v) + heads * v * h), True, True,
                 bf16_in=("nvfp4",)),
            Part("attention (replicated)", n_layers * ((h * qr if qr else 0) + h * (kvr + rope)), True, False,
                 bf16_in=("fp8", "nvfp4")),
            Part("norms", n_layers * (2 * h + qr + kvr) + h, False, False),
        ]
    kv, hd = text.get("num_key_value_heads") or heads, text.get("head_dim") or h // heads
    bias = (heads * hd + 2 * kv * hd) if text.get("attention_bias") else 0
    return [Part("attention", n_layers * (2 * h * heads * hd + 2 * h * kv * hd + bias), True, True),
            Part("norms", n_layers * 2 * h + h, False, False)]


def _mlp_parts(text: dict[str, Any]) -> list[Part]:
    h, n_layers = text["hidden_size"], text["num_hidden_layers"]
    experts = text.get("n_routed_experts") or text.get("num_local_experts") or text.get("num_experts") or 0
    if not experts:
        return [Part("MLP", n_layers * 3 * h * text["intermediate_size"], True, True)]
    k = text["num_experts_per_tok"]
    expert = 3 * h * (text.get("moe_intermediate_size") or text["intermediate_size"])  # gate, up, down
    dense_layers = text.get("first_k_dense_replace") or 0
    moe_layers = n_layers - dense_layers
    parts = [
        Part("routed experts", moe_layers * experts * expert, True, True, k / experts),
        Part("shared experts", moe_layers * (text.get("n_shared_experts") or 0) * expert, True, True),
        Part("router", moe_layers * h * experts, False, False),
    ]
    if dense_layers:
        parts.append(Part("dense MLP", dense_layers * 3 * h * text["intermediate_size"], True, True))
    return parts


def _vision_parts(config: dict[str, Any], text_hidden: int) -> list[Part]:
    vision = config.get("vision_config")
    if not vision:
        return []
    vh, vi = vision["hidden_size"], vision["intermediate_size"]
    layers = vision.get("num_hidden_layers") or vision["depth"]
    patch = vision.get("patch_size", 14)
    channels = vision.get("num_channels") or vision.get("in_chans") or 3
    merge = config.get("spatial_merge_size") or vision.get("spatial_merge_size") or 1
    if "out_hidden_size" in vision:  # Qwen2.5-VL: biased qkv/proj/gated MLP, conv3d patches, ln + 2-layer merger
        out, wide = vision["out_hidden_size"], vh * merge * merge
        tower = (layers * (2 * vh + 4 * vh * vh + 4 * vh + 3 * vh * vi + 2 * vi + vh)
                 + channels * vision.get("temporal_patch_size", 2) * patch * patch * vh)
        projector = vh + wide * wide + wide + wide * out + out
    else:  # Pixtral (Mistral 3/4): unbiased attention and gated MLP, conv2d patches, ln_pre; merger + 2-layer MLP
        out = text_hidden
        tower = layers * (4 * vh * vh + 3 * vh * vi + 2 * vh) + channels * patch * patch * vh + vh
        projector = vh + (vh * merge * merge) * vh + vh * out + out * out  # norm, patch merger, linear_1, linear_2
    return [Part("vision tower", tower, False, True, 0.0), Part("projector", projector, False, True, 0.0)]


def spec_from_config(name: str, config: dict[str, Any]) -> ModelSpec:
    """Raises ``SpecError`` for a config that is not a decoder language model."""
    text = _decoder_text_config(name, config)
    h, n_layers, heads = text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"]
    try:
        parts = _attention_parts(text) + _mlp_parts(text)
        parts.append(Part("embeddings", text["vocab_size"] * h, False, True))
        if not _tied(config, text):
            parts.append(Part("lm_head", text["vocab_size"] * h, False, True))
        parts += _vision_parts(config, h)
    except (KeyError, TypeError) as exc:
        raise SpecError(f"'{name}': its config lacks a field the architecture needs ({exc})") from exc
    mla = bool(text.get("kv_lora_rank"))
    return ModelSpec(
        name=name, parts=tuple(p for p in parts if p.params), attention="mla" if mla else "gqa",
        layers=n_layers, attention_heads=heads,
        max_context=int(text.get("max_position_embeddings") or config.get("max_position_embeddings") or 0),
        kv_lora_rank=text.get("kv_lora_rank") or 0, qk_rope_head_dim=text.get("qk_rope_head_dim") or 0,
        kv_heads=0 if mla else (text.get("num_key_value_heads") or heads),
        head_dim=0 if mla else (text.get("head_dim") or h // heads),
        experts=text.get("n_routed_experts") or text.get("num_local_experts") or text.get("num_experts") or 0,
        experts_per_token=text.get("num_experts_per_tok") or 0,
    )


def load_spec(model: str) -> ModelSpec:
    name, config = load_config(model)
    return spec_from_config(name, config)
