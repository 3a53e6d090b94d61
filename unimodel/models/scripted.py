"""``tiny-scripted``: a tiny Small 4-shaped checkpoint whose greedy output is a script the prompt picks.

A random model never emits ``[THINK]`` or ``[TOOL_CALLS]``, so it cannot show how an engine and its parsers
treat reasoning, calls, parallel calls, a call cut by ``max_tokens`` or text after a call. This one does, on
any engine that computes Mistral Small 4's function (our transformers engine, vLLM's CPU and GPU builds),
because its weights are *written*, not trained. The construction (hand-written: nothing else builds such
weights), with every norm's weight 1:

* **Tokens as directions.** The hidden space is cut into one-hot slots: a slot per token that can be the
  current token of a script (``pred``), a key slot per *selector* token, a phase slot per selector and a
  slot per transition. Other tokens have small random embeddings in the remaining dimensions.
* **Attention picks the phase.** In layer 0 every script token queries the selector keys (one head, no rope:
  the rope halves of ``q`` and ``k`` are zero); each selector's key has a fixed score level, so the selector
  of the highest level present in the context takes all the attention and writes its phase slot.
  Levels: the prompt's ``<s>`` (the default script) < the script's selector word in the user message < the
  script's *markers* (tokens of its own output, in order), which let a token appear again later in a script.
* **The MLP is a lookup table.** Layer 0's dense MLP has one unit per transition ``(token a, phase s) -> b``:
  ``silu(gate·x)`` reads ``a``'s slot, ``up·x`` reads ``s``'s slot, so the unit fires only for that pair (a
  product: an AND), and ``down`` writes the transition's slot.
* **The head reads transitions.** ``lm_head`` row ``b`` is 20 × the slots of the transitions that lead to
  ``b``: after the final norm the next token's logit is ~200 and every other token's is 0, so greedy (and
  any sampling at ordinary temperatures) follows the script. Layer 1 (the MoE layer) adds nothing.

A script's tokens may repeat only across phases (a marker in between); :func:`compile_scripts` checks it, and
that every transition is unambiguous, when the checkpoint is built.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

BOS_ID = 1
EOS_ID = 2
INST_END = "[/INST]"
_SPECIAL = re.compile(r"(\[[A-Z_/]+\]|</s>)")


@dataclass(frozen=True)
class Script:
    """What greedy decoding emits after ``[/INST]`` when the user message holds ``selector``."""

    name: str
    #: a word that is one token of the tiny vocabulary; None: the default script (no selector in the prompt)
    selector: Optional[str]
    #: the output, special tokens written by name; ``</s>`` is added at the end
    text: str
    #: tokens of ``text`` (in order) from which on the script is in a new phase (so tokens may repeat)
    markers: tuple[str, ...] = ()

    @property
    def prompt(self) -> str:
        """A user message that picks this script."""
        return "Say something." if self.selector is None else f"Follow the script of{self.selector}."


SCRIPTS: tuple[Script, ...] = (
    Script("plain", None, "Hello! Grüße 띧 café — the table is set"),
    Script("think", " Rome", "[THINK]Let me think about it.[/THINK]Sunny and mild today"),
    Script("tool", " Madrid", '[TOOL_CALLS]get_weather[ARGS]{"city": "Berlin"}'),
    Script("parallel", " Sydney",
           '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}[TOOL_CALLS]get_time[ARGS]{"tz": "UTC"}',
           markers=("Par", "UTC")),
    Script("think_tool", " Tokyo", '[THINK]I should call a tool.[/THINK][TOOL_CALLS]lookup[ARGS]{"q": "news"}'),
    Script("after_call", " Paris", '[TOOL_CALLS]get_weather[ARGS]{"city": "Lima"} Done, see above'),
    Script("long_think", " Berlin",
           "[THINK]apple banana cherry grape lemon mango olive peach plum melon kiwi fig lime pear"
           "[/THINK]Finally an answer"),
)


def script(name: str) -> Script:
    for s in SCRIPTS:
        if s.name == name:
            return s
    raise KeyError(name)


@dataclass(frozen=True)
class CompiledScripts:
    """The scripts as token transitions: ``(token, selector) -> next token``, and each selector's level."""

    transitions: dict[tuple[int, int], int]
    levels: dict[int, int]  # selector token id -> score level
    sequences: dict[str, list[int]]  # script name -> its output token ids (EOS included)


def _encode(tokenizer: Any, text: str) -> list[int]:
    ids: list[int] = []
    for part in _SPECIAL.split(text):
        if not part:
            continue
        if _SPECIAL.fullmatch(part):
            ids.append(EOS_ID if part == "</s>" else _special(tokenizer, part))
        else:
            ids.extend(tokenizer.encode(part, bos=False, eos=False))
    return ids


def _special(tokenizer: Any, name: str) -> int:
    lookup = getattr(tokenizer, "get_special_token", None) or tokenizer.get_control_token  # renamed in 1.9
    return int(lookup(name))


def _single(tokenizer: Any, word: str, what: str) -> int:
    ids = tokenizer.encode(word, bos=False, eos=False)
    if len(ids) != 1:
        raise ValueError(f"{what} {word!r} is {len(ids)} tokens in this vocabulary; it must be one")
    return int(ids[0])


def compile_scripts(tokenizer: Any, scripts: tuple[Script, ...] = SCRIPTS) -> CompiledScripts:
    """Token transitions of ``scripts`` for a ``Tekkenizer``; ValueError when a script is ambiguous."""
    inst_end = _special(tokenizer, INST_END)
    levels: dict[int, int] = {BOS_ID: 0}
    owner: dict[int, str] = {}
    transitions: dict[tuple[int, int], int] = {}
    sequences: dict[str, list[int]] = {}
    for s in scripts:
        selector = BOS_ID if s.selector is None else _single(tokenizer, s.selector, "the selector")
        if s.selector is not None:
            if selector in levels:
                raise ValueError(f"script {s.name}: selector {s.selector!r} is used twice")
            levels[selector] = 1
        markers = [_single(tokenizer, m, "the marker") for m in s.markers]
        for level, marker in enumerate(markers, start=2):
            if marker in levels:
                raise ValueError(f"script {s.name}: marker {tokenizer.id_to_piece(marker)!r} is used twice")
            levels[marker] = level
            owner[marker] = s.name
        out = _encode(tokenizer, s.text) + [EOS_ID]
        sequences[s.name] = out
        phase = selector
        seen: set[tuple[int, int]] = set()
        for current, following in zip([inst_end] + out[:-1], out):
            if current in markers:
                phase = current
            key = (current, phase)
            if key in seen:
                raise ValueError(f"script {s.name}: {tokenizer.id_to_piece(current)!r} comes twice in one phase; "
                                 f"add a marker between")
            seen.add(key)
            if transitions.get(key, following) != following:
                raise ValueError(f"script {s.name}: {key} already leads elsewhere")
            transitions[key] = following
    for s in scripts:  # a marker in another script's output would switch that script's phase
        for token in sequences[s.name]:
            if token in owner and owner[token] != s.name:
                raise ValueError(f"script {s.name} emits {owner[token]}'s marker {tokenizer.id_to_piece(token)!r}")
    return CompiledScripts(transitions, levels, sequences)


def scripted_state_dict(config: Any, compiled: CompiledScripts, *, seed: int) -> dict[str, Any]:
    """The weights (transformers ``Mistral4ForCausalLM`` names) that make greedy decoding follow ``compiled``."""
    import torch

    hidden, vocab = config.hidden_size, config.vocab_size
    heads, nope, rope, v_dim = (config.num_attention_heads, config.qk_nope_head_dim, config.qk_rope_head_dim,
                                config.v_head_dim)
    q_rank, kv_rank = config.q_lora_rank, config.kv_lora_rank
    preds = sorted({a for a, _ in compiled.transitions} | {b for b in compiled.transitions.values()})
    selectors = sorted(compiled.levels)
    pairs = sorted(compiled.transitions)
    slot = iter(range(hidden))
    pred_slot = {t: next(slot) for t in preds}
    key_slot = {s: next(slot) for s in selectors}
    phase_slot = {s: next(slot) for s in selectors}
    pair_slot = {p: next(slot) for p in pairs}
    free = hidden - len(preds) - 2 * len(selectors) - len(pairs)
    if free < 16 or len(selectors) > min(nope, v_dim, kv_rank) or len(pairs) > config.intermediate_size:
        raise ValueError(f"the scripts need more room: hidden {hidden} (free {free}), "
                         f"{len(selectors)} selectors, {len(pairs)} transitions")

    gen = torch.Generator().manual_seed(seed)
    zeros = torch.zeros
    embed = zeros(vocab, hidden)
    embed[:, hidden - free:] = torch.randn(vocab, free, generator=gen) / free ** 0.5
    for t, i in pred_slot.items():
        embed[t] = 0.0
        embed[t, i] = 1.0
    for s, i in key_slot.items():
        embed[s, i] = 1.0

    # scores ≈ level × 25 after the softmax scale: the highest level present takes all the attention
    scale = _softmax_scale(config)
    unit_score = (q_rank ** 0.5) * (kv_rank ** 0.5) * scale  # q·k for a coefficient of 1
    q_a = zeros(q_rank, hidden)
    for i in pred_slot.values():
        q_a[0, i] = 1.0
    q_b = zeros(heads * (nope + rope), q_rank)
    kv_a = zeros(kv_rank + rope, hidden)
    kv_b = zeros(heads * (nope + v_dim), kv_rank)
    o = zeros(hidden, heads * v_dim)
    for j, s in enumerate(selectors):
        q_b[j, 0] = 25.0 * (compiled.levels[s] + 1) / unit_score
        kv_a[j, key_slot[s]] = 1.0
        kv_b[j, j] = 1.0  # head 0's k_nope
        kv_b[nope + j, j] = 1.0  # head 0's value
        o[phase_slot[s], j] = 1.0 / kv_rank ** 0.5
    inter = config.intermediate_size
    gate, up, down = zeros(inter, hidden), zeros(inter, hidden), zeros(hidden, inter)
    for u, (a, s) in enumerate(pairs):
        gate[u, pred_slot[a]] = 1.0
        up[u, phase_slot[s]] = 1.0
        down[pair_slot[(a, s)], u] = 0.01
    head = zeros(vocab, hidden)
    for (a, s), b in compiled.transitions.items():
        head[b, pair_slot[(a, s)]] = 20.0

    state: dict[str, Any] = {"model.embed_tokens.weight": embed, "lm_head.weight": head,
                             "model.norm.weight": torch.ones(hidden)}
    moe_inter = config.moe_intermediate_size
    for layer in range(config.num_hidden_layers):
        p = f"model.layers.{layer}."
        first = layer == 0
        state.update({
            p + "input_layernorm.weight": torch.ones(hidden),
            p + "post_attention_layernorm.weight": torch.ones(hidden),
            p + "self_attn.q_a_proj.weight": q_a if first else zeros(q_rank, hidden),
            p + "self_attn.q_a_layernorm.weight": torch.ones(q_rank),
            p + "self_attn.q_b_proj.weight": q_b if first else zeros(heads * (nope + rope), q_rank),
            p + "self_attn.kv_a_proj_with_mqa.weight": kv_a if first else zeros(kv_rank + rope, hidden),
            p + "self_attn.kv_a_layernorm.weight": torch.ones(kv_rank),
            p + "self_attn.kv_b_proj.weight": kv_b if first else zeros(heads * (nope + v_dim), kv_rank),
            p + "self_attn.o_proj.weight": o if first else zeros(hidden, heads * v_dim),
        })
        if layer < config.first_k_dense_replace:
            state.update({p + "mlp.gate_proj.weight": gate if first else zeros(inter, hidden),
                          p + "mlp.up_proj.weight": up if first else zeros(inter, hidden),
                          p + "mlp.down_proj.weight": down if first else zeros(hidden, inter)})
        else:
            experts = config.n_routed_experts
            shared = moe_inter * config.n_shared_experts
            state.update({
                p + "mlp.gate.weight": zeros(experts, hidden),
                p + "mlp.experts.gate_up_proj": zeros(experts, 2 * moe_inter, hidden),
                p + "mlp.experts.down_proj": zeros(experts, hidden, moe_inter),
                p + "mlp.shared_experts.gate_proj.weight": zeros(shared, hidden),
                p + "mlp.shared_experts.up_proj.weight": zeros(shared, hidden),
                p + "mlp.shared_experts.down_proj.weight": zeros(hidden, shared),
            })
    return state


def _softmax_scale(config: Any) -> float:
    """The attention's softmax scale: 1/sqrt(q·k head dim), times yarn's mscale² (as both engines compute it)."""
    from unimodel.models.mistral_native import yarn_mscale

    scale = (config.qk_nope_head_dim + config.qk_rope_head_dim) ** -0.5
    rope = getattr(config, "rope_parameters", None) or {}
    all_dim = rope.get("mscale_all_dim")
    if rope.get("rope_type", rope.get("type")) == "yarn" and all_dim:
        scale *= yarn_mscale(float(rope.get("factor") or 1.0), float(all_dim)) ** 2
    return scale
