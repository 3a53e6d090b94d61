"""Mistral Small 4's parameters by hand, from its config (shared by the plan tests)."""

from __future__ import annotations

# Mistral Small 4's text config, by hand
H, LAYERS, HEADS, VOCAB = 4096, 36, 32, 131072
Q_LORA, KV_LORA, ROPE, NOPE, V = 1024, 256, 64, 64, 128
EXPERTS, K, SHARED, MOE_INTER = 128, 4, 1, 2048


def small_4_by_hand() -> dict[str, int]:
    attention = LAYERS * (
        H * Q_LORA                       # q_a_proj: hidden -> q_lora_rank          (replicated under TP)
        + Q_LORA * HEADS * (NOPE + ROPE)  # q_b_proj: q_lora -> heads x (nope + rope)
        + H * (KV_LORA + ROPE)           # kv_a_proj_with_mqa: hidden -> latent + rope key (replicated)
        + KV_LORA * HEADS * (NOPE + V)   # kv_b_proj: latent -> heads x (nope + v)
        + HEADS * V * H                  # o_proj
    )
    expert = 3 * H * MOE_INTER           # gate, up, down of one expert
    vision = (24 * (4 * 1024 * 1024 + 3 * 1024 * 4096 + 2 * 1024)  # Pixtral: attention, gated MLP, 2 norms
              + 3 * 14 * 14 * 1024 + 1024)                         # patch conv, ln_pre
    projector = 1024 + (4 * 1024) * 1024 + 1024 * H + H * H         # norm, 2x2 patch merger, linear_1, linear_2
    replicated = LAYERS * (H * Q_LORA + H * (KV_LORA + ROPE))  # q_a_proj, kv_a_proj_with_mqa
    return {
        "attention": attention,
        "attention_replicated": replicated,
        "routed": LAYERS * EXPERTS * expert,
        "shared": LAYERS * SHARED * expert,
        "router": LAYERS * H * EXPERTS,
        "norms": LAYERS * (2 * H + Q_LORA + KV_LORA) + H,
        "embeddings": VOCAB * H,
        "lm_head": VOCAB * H,            # untied
        "vision": vision + projector,
        "expert": expert,
    }
