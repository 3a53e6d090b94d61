"""Built-in copies of the ``config.json`` of models ``plan`` knows by name (no hub needed).

``mistral-small-4``: Mistral-Small-4-119B-2603 as transformers loads it (Mistral3ForConditionalGeneration
wrapping a ``mistral4`` text model). The text numbers are transformers 5.23's ``Mistral4Config`` defaults,
which are this model's (hidden 4096, 36 layers, 32 heads, MLA q_lora 1024 / kv_lora 256 / rope 64 / nope 64 /
v 128, 128 routed experts of 2048 plus 1 shared, 4 active, vocab 131072, untied embeddings); the vision tower
is ``PixtralVisionConfig``'s defaults (1024 hidden, 24 layers, patch 14) with a 2x2 patch merger. Computed
from these, the totals land on the published figures: 119.4B parameters, ~6.6B active per token with
embeddings (the card says 6.5B). Context: 262,144 tokens (the card's 256K). Not confirmed from the real file:
the exact vision tower size (±0.1B) and which tensors the FP8 checkpoint keeps in BF16 (we assume the
usual: embeddings, lm_head, norms, router, vision tower and projector).

The others are the four single-purpose servers the seed guides price against it, with their published
``config.json`` shapes, and Mistral Small 3.2 (a GQA model).
"""

from __future__ import annotations

from typing import Any

MISTRAL_SMALL_4: dict[str, Any] = {
    "architectures": ["Mistral3ForConditionalGeneration"],
    "model_type": "mistral3",
    "spatial_merge_size": 2,
    "text_config": {
        "model_type": "mistral4", "vocab_size": 131072, "hidden_size": 4096, "intermediate_size": 12288,
        "moe_intermediate_size": 2048, "num_hidden_layers": 36, "num_attention_heads": 32,
        "num_key_value_heads": 32, "n_shared_experts": 1, "n_routed_experts": 128, "num_experts_per_tok": 4,
        "first_k_dense_replace": 0, "q_lora_rank": 1024, "kv_lora_rank": 256, "qk_rope_head_dim": 64,
        "qk_nope_head_dim": 64, "v_head_dim": 128, "tie_word_embeddings": False,
        "max_position_embeddings": 262144,
    },
    "vision_config": {
        "model_type": "pixtral", "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
        "num_attention_heads": 16, "patch_size": 14, "num_channels": 3, "image_size": 1540,
    },
}


def _llama(hidden: int, layers: int, heads: int, kv: int, inter: int, vocab: int, ctx: int,
           arch: str = "LlamaForCausalLM", tied: bool = False, qkv_bias: bool = False,
           head_dim: int | None = None) -> dict[str, Any]:
    return {"architectures": [arch], "model_type": "llama", "hidden_size": hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": head_dim or hidden // heads,
            "intermediate_size": inter, "vocab_size": vocab, "max_position_embeddings": ctx,
            "tie_word_embeddings": tied, "attention_bias": qkv_bias}


QWEN25_VL_32B = {
    **_llama(5120, 64, 40, 8, 27648, 152064, 128000, "Qwen2_5_VLForConditionalGeneration", qkv_bias=True),
    "model_type": "qwen2_5_vl",
    "vision_config": {"hidden_size": 1280, "intermediate_size": 3456, "num_hidden_layers": 32,
                      "out_hidden_size": 5120, "spatial_merge_size": 2, "patch_size": 14},
}

BUILTIN: dict[str, dict[str, Any]] = {
    "mistral-small-4": MISTRAL_SMALL_4,
    "llama-3.3-70b": _llama(8192, 80, 64, 8, 28672, 128256, 131072),
    "deepseek-r1-distill-llama-70b": _llama(8192, 80, 64, 8, 28672, 128256, 131072),
    "qwen2.5-vl-32b": QWEN25_VL_32B,
    "qwen2.5-coder-32b": _llama(5120, 64, 40, 8, 27648, 152064, 32768, "Qwen2ForCausalLM", qkv_bias=True),
    "mistral-small-3.2-24b": _llama(5120, 40, 32, 8, 32768, 131072, 131072, "MistralForCausalLM", head_dim=128),
}

#: the four-server setup of the seed guides: (role, built-in model)
FOUR_SERVERS: tuple[tuple[str, str], ...] = (
    ("instruct", "llama-3.3-70b"),
    ("reasoning", "deepseek-r1-distill-llama-70b"),
    ("vision", "qwen2.5-vl-32b"),
    ("code", "qwen2.5-coder-32b"),
)
