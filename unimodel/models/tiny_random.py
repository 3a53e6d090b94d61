"""``tiny-random`` and ``tiny-random-vision``: small random-weight checkpoints shaped like Mistral Small 4.

They let the whole stack (rendering, the engine, batching, parsing, the server) run on any machine, including
CI without a model hub. Their output is gibberish; only their *shape* is real:

* text: ``Mistral4ForCausalLM`` with MLA attention (q/kv LoRA ranks, split rope/nope head dims) and a MoE
  (a few routed experts plus a shared expert), 2 layers, hidden size 64;
* vision: ``Mistral3ForConditionalGeneration`` with a tiny Pixtral vision tower and the same mistral4 text part;
* ``tiny-random-native`` and ``tiny-scripted``: the text model in Mistral's native format (``params.json`` +
  ``consolidated.safetensors``, as Small 4 ships and vLLM's recipe loads it), sized for vLLM's CPU MLA kernel;
  ``tiny-scripted`` has written weights whose greedy output is a script the prompt picks
  (:mod:`unimodel.models.scripted`), so real engines emit real reasoning and tool calls;
* a tokenizer ``tekken.json`` of version v15 (``[THINK]``, ``[MODEL_SETTINGS]``, ``[ARGS]``, ``[CALL_ID]`` …,
  a reasoning-effort model-settings builder ``none|high``), derived from the tekken file that ships inside
  ``mistral_common``.

Hand-written because no published checkpoint of this shape is small, and the hub may be unreachable. To stay
a few MB, the tokenizer keeps the first 31,768 BPE merges of the shipped tekken (1,000 special tokens + 31,768
= 32,768 ids, the model's vocabulary); texts tokenize into somewhat more tokens than with the real 131k
vocabulary, which is irrelevant for gibberish. Building is deterministic (fixed torch seed) and atomic (built
in a temporary directory, then renamed), and happens once per cache directory: ``$UNIMODEL_CACHE_DIR``, else
``$XDG_CACHE_HOME/unimodel``, else ``~/.cache/unimodel``.

Nothing here runs at import: torch, transformers and the tekken data are loaded only when a build is needed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

TINY_RANDOM_NAMES: tuple[str, ...] = ("tiny-random", "tiny-random-vision", "tiny-random-native", "tiny-scripted")
#: the ones written in Mistral's native format (params.json + consolidated.safetensors), sized for vLLM's CPU
#: MLA kernel (latent head 512 + 64), which vLLM loads the Small 4 recipe's way
NATIVE_NAMES: tuple[str, ...] = ("tiny-random-native", "tiny-scripted")

#: bump when the recipe changes: it is part of the cache directory's name, so old builds are never reused
RECIPE_VERSION = 2  # 2: generation_config caps the gibberish at 256 new tokens
MARKER_FILE = "unimodel_tiny_random.json"
SEED = 20260301

NUM_SPECIAL = 1000
VOCAB_SIZE = 32768  # special tokens + the first VOCAB_SIZE - NUM_SPECIAL merges of the shipped tekken
IMAGE_TOKEN = "[IMG]"

# the special tokens of a v13+/v15 tekken, at their rank; the rest up to NUM_SPECIAL are "<SPECIAL_n>" fillers
_SPECIALS: tuple[str, ...] = (
    "<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]", "[TOOL_CALLS]", "[IMG]", "<pad>", "[IMG_BREAK]", "[IMG_END]", "[PREFIX]", "[MIDDLE]",
    "[SUFFIX]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[TOOL_CONTENT]", "[ARGS]", "[CALL_ID]", "[AUDIO]",
    "[BEGIN_AUDIO]", "[TRANSCRIBE]", "[THINK]", "[/THINK]", "[STREAMING_PAD]", "[STREAMING_WORD]",
    "[NEXT_AUDIO_TEXT]", "[REPEAT_AUDIO_TEXT]", "[MODEL_SETTINGS]", "[/MODEL_SETTINGS]",
)


def tiny_note(directory: Path) -> str:
    """What a built checkpoint is (its marker's note: random gibberish, or scripted weights)."""
    try:
        return str(json.loads((directory / MARKER_FILE).read_text(encoding="utf-8"))["note"])
    except (OSError, ValueError, KeyError, TypeError):
        return "random weights: the output is gibberish; for smoke tests and demos only"


def is_tiny_random(name: str) -> bool:
    """Whether ``name`` is one of the reserved tiny-random model names."""
    return name in TINY_RANDOM_NAMES


def default_cache_dir() -> Path:
    """Where built checkpoints live: ``$UNIMODEL_CACHE_DIR``, ``$XDG_CACHE_HOME/unimodel`` or ``~/.cache/unimodel``."""
    explicit = os.environ.get("UNIMODEL_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "unimodel"


def ensure_tiny_random(name: str = "tiny-random", cache_dir: Path | None = None) -> Path:
    """The checkpoint directory for ``name``, built on first use (atomic; concurrent builders are safe)."""
    if not is_tiny_random(name):
        raise ValueError(f"unknown tiny model {name!r}; known: {', '.join(TINY_RANDOM_NAMES)}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / f"{name}-r{RECIPE_VERSION}"
    if (target / MARKER_FILE).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-build-", dir=root))
    try:
        if name in NATIVE_NAMES:
            build_native_checkpoint(tmp, scripted=name == "tiny-scripted")
        else:
            build_checkpoint(tmp, vision=name.endswith("-vision"))
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / MARKER_FILE).is_file():  # not a lost race: a stale, broken directory
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---- the tokenizer ---------------------------------------------------------------------------------------


def special_tokens() -> list[dict[str, Any]]:
    """The special-token table of the tiny tekken (named tokens first, then fillers)."""
    names = list(_SPECIALS) + [f"<SPECIAL_{i}>" for i in range(len(_SPECIALS), NUM_SPECIAL)]
    return [{"rank": i, "token_str": s, "is_control": True} for i, s in enumerate(names)]


def tekken_v15(*, image: bool) -> dict[str, Any]:
    """A v15 tekken tokenizer file (as a dict) derived from the one shipped in ``mistral_common``."""
    source = resources.files("mistral_common") / "data" / "tekken_240911.json"
    data = json.loads(source.read_text(encoding="utf-8"))
    inner = VOCAB_SIZE - NUM_SPECIAL
    out: dict[str, Any] = {
        "config": {
            "pattern": data["config"]["pattern"],
            "num_vocab_tokens": inner,
            "default_vocab_size": VOCAB_SIZE,
            "default_num_special_tokens": NUM_SPECIAL,
            "version": "v15",
        },
        "vocab": data["vocab"][:inner],
        "special_tokens": special_tokens(),
        "model_settings_builder": {
            "reasoning_effort": {"type": "enum", "accepts_none": True, "default": "none", "values": ["none", "high"]}
        },
    }
    if image:
        out["image"] = {"image_patch_size": 16, "max_image_size": 128, "spatial_merge_size": 2}
    return out


# ---- the model -------------------------------------------------------------------------------------------


def _text_config_kwargs() -> dict[str, Any]:
    return {
        "vocab_size": VOCAB_SIZE,
        "hidden_size": 64,
        "intermediate_size": 128,
        "moe_intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "n_shared_experts": 1,
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "kv_lora_rank": 32,
        "q_lora_rank": 32,
        "qk_rope_head_dim": 8,
        "qk_nope_head_dim": 8,
        "v_head_dim": 16,
        "max_position_embeddings": 32768,
        "rope_parameters": {
            "type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 8192,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale_all_dim": 1.0, "mscale": 1.0, "llama_4_scaling_beta": 0.1,
        },
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 11,
        "tie_word_embeddings": False,
    }


def native_config_kwargs() -> dict[str, Any]:
    """The text config of the native-format checkpoints: Small 4's shape (MLA, a dense first layer, then MoE
    with a shared expert, yarn, llama-4 scaling) with the latent head vLLM's CPU MLA kernel takes (512 + 64)."""
    kwargs = _text_config_kwargs()
    kwargs.update(hidden_size=384, intermediate_size=256, q_lora_rank=64, kv_lora_rank=512, qk_rope_head_dim=64,
                  qk_nope_head_dim=64, v_head_dim=64, first_k_dense_replace=1)
    return kwargs


def build_native_checkpoint(directory: Path, *, scripted: bool) -> None:
    """Write tekken.json, params.json, consolidated.safetensors (and the marker): random weights, or the
    scripted ones of :mod:`unimodel.models.scripted`."""
    import torch
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer
    from transformers import GenerationConfig, Mistral4Config, Mistral4ForCausalLM

    from unimodel.models.mistral_native import write_native
    from unimodel.models.scripted import compile_scripts, scripted_state_dict

    directory.mkdir(parents=True, exist_ok=True)
    tekken_path = directory / "tekken.json"
    tekken_path.write_text(json.dumps(tekken_v15(image=False), ensure_ascii=False), encoding="utf-8")
    config = Mistral4Config(**native_config_kwargs())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = Mistral4ForCausalLM(config)
    if scripted:
        model.load_state_dict(scripted_state_dict(config, compile_scripts(Tekkenizer.from_file(tekken_path)),
                                                  seed=SEED), strict=True)
    write_native(model.to(torch.bfloat16), directory)
    if not scripted:  # random weights rarely emit EOS; scripts end with it
        GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=11, max_new_tokens=256).save_pretrained(
            directory)
    _finish(directory, "tiny-scripted" if scripted else "tiny-random-native",
            "scripted weights: greedy output follows the script its prompt picks (unimodel.models.scripted)"
            if scripted else "random weights: the output is gibberish; for smoke tests and demos only")


def _finish(directory: Path, name: str, note: str) -> None:
    marker = {"name": name, "recipe": RECIPE_VERSION, "seed": SEED, "note": note}
    (directory / MARKER_FILE).write_text(json.dumps(marker, indent=2), encoding="utf-8")
    directory.chmod(0o755)  # mkdtemp made it private; the cache is an ordinary user directory
    for path in directory.iterdir():
        path.chmod(0o644)


def build_checkpoint(directory: Path, *, vision: bool) -> None:
    """Write config.json, model.safetensors, generation_config.json, tekken.json and the marker to ``directory``."""
    import torch
    from transformers import (
        GenerationConfig,
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        Mistral4Config,
        Mistral4ForCausalLM,
        PixtralVisionConfig,
    )

    directory.mkdir(parents=True, exist_ok=True)
    tekken = tekken_v15(image=vision)
    (directory / "tekken.json").write_text(json.dumps(tekken, ensure_ascii=False), encoding="utf-8")

    text_config = Mistral4Config(**_text_config_kwargs())
    model: torch.nn.Module
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        if vision:
            vision_config = PixtralVisionConfig(
                hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, head_dim=16,
                image_size=128, patch_size=16,
            )
            config = Mistral3Config(
                vision_config=vision_config, text_config=text_config,
                image_token_index=_SPECIALS.index(IMAGE_TOKEN), spatial_merge_size=2, tie_word_embeddings=False,
            )
            model = Mistral3ForConditionalGeneration(config)
        else:
            model = Mistral4ForCausalLM(text_config)
    model = model.to(torch.bfloat16)
    model.save_pretrained(directory)  # type: ignore[operator]
    # random weights rarely emit EOS: without a cap a request would run to the end of the 32K context
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=11, max_new_tokens=256).save_pretrained(directory)
    _finish(directory, "tiny-random-vision" if vision else "tiny-random",
            "random weights: the output is gibberish; for smoke tests and demos only")
