"""Built-in copies of the ``config.json`` of models ``plan`` knows by name (no hub needed), as Python dicts.

``mistral-small-4`` is Mistral-Small-4-119B-2603 as transformers loads it: ``Mistral3ForConditionalGeneration``
wrapping a ``mistral4`` text model and a Pixtral vision tower. Where each number comes from:

- Confirmed by more than one source: hidden 4096, 36 layers, 32 heads (vendor model pages); MLA with
  q_lora_rank 1024 and kv_lora_rank 256 (a GGUF conversion's architecture notes); 128 routed experts, 4 active,
  1 shared (model card, vLLM recipe); vocab 131072; 262,144-token serving context while the config advertises
  1,048,576 YaRN positions, factor 128 over 8,192 (vLLM recipe); Pixtral encoder at 1540 px, patch 14 (vLLM
  recipe); FP8 E4M3 weights with the vision tower, projector and lm_head in BF16 (vLLM recipe).
- Taken from transformers 5.23's ``Mistral4Config`` defaults, whose docstring says they reproduce this model:
  qk_rope_head_dim 64, qk_nope_head_dim 64, v_head_dim 128, moe_intermediate_size 2048,
  first_k_dense_replace 0, untied lm_head, and the RoPE parameters. The Pixtral tower (1024 hidden, 24 layers,
  16 heads, 4096 MLP) is Pixtral-12B's, as in Mistral Small 3.x.
- Checked by arithmetic: these give 118.97B text parameters, i.e. 221.6 GiB in BF16, against 221.64 GiB
  reported for the BF16 GGUF; 0.43B for tower + projector (857 MB in 16-bit) against the ~827 MB mmproj file;
  119.4B in all (published: 119B) and 6.63B used per token counting embeddings and lm_head (published: 6.5B;
  Mistral's docs say ~6B, or ~8B with embeddings). Instantiating transformers' model from this dict on the
  meta device gives the same count to the parameter (see the tests).
- Checked against the NVFP4 checkpoint: it quantizes the routed and shared experts only and keeps all
  attention, router, norms, embeddings, lm_head and the vision side in BF16 (a conversion script for its
  consolidated layout maps ``experts.*.w{1,2,3}.{weight_packed,weight_scale,weight_global_scale,
  input_global_scale}`` and loads ``wq_a``/``wq_b``/``wkv_a_with_mqa``/``wkv_b``/``wo`` as plain BF16
  ``.weight``); at 4.5 bits a parameter for the experts that is 70.80 GB, what the hub lists (70.8 GB,
  ~66 GiB on disk). Quantizing the attention as well, as this planner first did, came to 69.35 GB.
- Not confirmed from the real file: ``intermediate_size`` (12288, unused: there are no dense layers), token
  ids, and the FP8 checkpoint's ignore list beyond the recipe's (vision tower, projector, lm_head): we keep
  norms, router and embeddings in BF16, the usual, and MLA's ``q_a_proj``/``kv_a_proj_with_mqa`` too, as
  Mistral's FP8 ignore list for Mistral Large 3 (the same MLA layout) does.

The other entries are the four single-purpose servers the seed guides price against it (their published
``config.json`` shapes) and the Mistral Small 3.x family (24B, GQA), which the tests use as the GQA case.
"""

from __future__ import annotations

from typing import Any, Optional

PIXTRAL: dict[str, Any] = {
    "model_type": "pixtral", "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
    "num_attention_heads": 16, "head_dim": 64, "patch_size": 14, "num_channels": 3, "image_size": 1540,
}

MISTRAL_SMALL_4: dict[str, Any] = {
    "architectures": ["Mistral3ForConditionalGeneration"],
    "model_type": "mistral3",
    "image_token_index": 10,
    "spatial_merge_size": 2,
    "projector_hidden_act": "gelu",
    "multimodal_projector_bias": False,
    "vision_feature_layer": -1,
    "tie_word_embeddings": False,
    "text_config": {
        "model_type": "mistral4", "vocab_size": 131072, "hidden_size": 4096, "intermediate_size": 12288,
        "moe_intermediate_size": 2048, "num_hidden_layers": 36, "num_attention_heads": 32,
        "num_key_value_heads": 32, "n_shared_experts": 1, "n_routed_experts": 128, "num_experts_per_tok": 4,
        "first_k_dense_replace": 0, "q_lora_rank": 1024, "kv_lora_rank": 256, "qk_rope_head_dim": 64,
        "qk_nope_head_dim": 64, "v_head_dim": 128, "head_dim": 128, "tie_word_embeddings": False,
        "hidden_act": "silu", "rms_norm_eps": 1e-06, "max_position_embeddings": 1048576,
        "rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 128.0,
                            "original_max_position_embeddings": 8192, "beta_fast": 32.0, "beta_slow": 1.0,
                            "mscale": 1.0, "mscale_all_dim": 1.0, "llama_4_scaling_beta": 0.1},
    },
    "vision_config": PIXTRAL,
}


def _llama(hidden: int, layers: int, heads: int, kv: int, inter: int, vocab: int, ctx: int,
           arch: str = "LlamaForCausalLM", model_type: str = "llama", tied: bool = False,
           qkv_bias: bool = False, head_dim: Optional[int] = None) -> dict[str, Any]:
    return {"architectures": [arch], "model_type": model_type, "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": head_dim or hidden // heads,
            "intermediate_size": inter, "vocab_size": vocab, "max_position_embeddings": ctx,
            "tie_word_embeddings": tied, "attention_bias": qkv_bias}


def _mistral_small_3(ctx: int, vision: bool) -> dict[str, Any]:
    """Mistral Small 3.x / Magistral Small / Devstral Small: 24B dense, GQA 32 query / 8 KV heads of 128."""
    text = _llama(5120, 40, 32, 8, 32768, 131072, ctx, "MistralForCausalLM", "mistral", head_dim=128)
    if not vision:
        return text
    return {"architectures": ["Mistral3ForConditionalGeneration"], "model_type": "mistral3",
            "spatial_merge_size": 2, "tie_word_embeddings": False,
            "text_config": {k: v for k, v in text.items() if k != "architectures"}, "vision_config": PIXTRAL}


QWEN25_VL_32B: dict[str, Any] = {
    **_llama(5120, 64, 40, 8, 27648, 152064, 128000, "Qwen2_5_VLForConditionalGeneration", "qwen2_5_vl",
             qkv_bias=True),
    "vision_config": {"model_type": "qwen2_5_vl", "depth": 32, "hidden_size": 1280, "intermediate_size": 3456,
                      "num_heads": 16, "out_hidden_size": 5120, "spatial_merge_size": 2, "patch_size": 14,
                      "temporal_patch_size": 2, "in_chans": 3},
}

BUILTIN: dict[str, dict[str, Any]] = {
    "mistral-small-4": MISTRAL_SMALL_4,
    "mistral-small-3.2-24b": _mistral_small_3(131072, vision=True),
    "magistral-small-24b": _mistral_small_3(40960, vision=False),
    "devstral-small-24b": _mistral_small_3(131072, vision=False),
    "llama-3.3-70b": _llama(8192, 80, 64, 8, 28672, 128256, 131072),
    "deepseek-r1-distill-llama-70b": _llama(8192, 80, 64, 8, 28672, 128256, 131072),
    "qwen2.5-vl-32b": QWEN25_VL_32B,
    "qwen2.5-coder-32b": _llama(5120, 64, 40, 8, 27648, 152064, 32768, "Qwen2ForCausalLM", "qwen2", qkv_bias=True),
}

#: hub ids of the built-ins, for the launch commands
HUB_IDS: dict[str, str] = {
    "mistral-small-4": "mistralai/Mistral-Small-4-119B-2603",
    "mistral-small-3.2-24b": "mistralai/Mistral-Small-3.2-24B-Instruct-2506",
    "magistral-small-24b": "mistralai/Magistral-Small-2506",
    "devstral-small-24b": "mistralai/Devstral-Small-2507",
    "llama-3.3-70b": "meta-llama/Llama-3.3-70B-Instruct",
    "deepseek-r1-distill-llama-70b": "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
    "qwen2.5-vl-32b": "Qwen/Qwen2.5-VL-32B-Instruct",
    "qwen2.5-coder-32b": "Qwen/Qwen2.5-Coder-32B-Instruct",
}

#: the four-server setup of the seed guides (instruct, reasoning, vision, code): (role, built-in model)
FOUR_SERVERS: tuple[tuple[str, str], ...] = (
    ("instruct", "llama-3.3-70b"),
    ("reasoning", "deepseek-r1-distill-llama-70b"),
    ("vision", "qwen2.5-vl-32b"),
    ("code", "qwen2.5-coder-32b"),
)
