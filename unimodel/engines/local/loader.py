"""Find, load and place the model: ``tiny-random`` / a local path / a hub id → model class, device, dtype.

Rules:

* ``tiny-random`` and ``tiny-random-vision`` are built once into the cache (:mod:`unimodel.models`).
* A name that is an existing directory is loaded from there; anything else is a hub id, downloaded with
  ``huggingface_hub`` (the hub is touched only then).
* A directory in Mistral's native format (``params.json`` + ``consolidated*.safetensors``, no ``config.json``:
  what vLLM loads with ``--load-format mistral``) is converted while it loads
  (:mod:`unimodel.models.mistral_native`); text models only.
* ``AutoModelForCausalLM`` does not map ``Mistral4Config``: ``model_type`` ``mistral4`` loads
  ``Mistral4ForCausalLM`` and ``mistral3`` loads ``Mistral3ForConditionalGeneration`` (text + Pixtral), by
  class; other checkpoints go through ``AutoModelForImageTextToText`` (when the config has a vision part)
  or ``AutoModelForCausalLM``.
* The model family is the configured one (``--model-family``), else the one the checkpoint shows
  (:func:`unimodel.formats.registry.detect_format`: a ``tekken.json`` is Mistral); the family's format picks
  the renderer (``mistral_common`` for tekken checkpoints, else the chat template).
* ``--dtype auto``: bfloat16 on CUDA (float16 where bf16 is unsupported), float32 on CPU (CPU bf16 matmuls
  are slow without AMX and lose precision).

Every failure is a :class:`ModelLoadError` saying what was tried and what to do next.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unimodel.formats.base import ModelFormat
from unimodel.formats.registry import detect_format, get_format
from unimodel.formats.render import PromptRenderer
from unimodel.models.mistral_native import NativeFormatError, is_native_checkpoint, load_native
from unimodel.models.tiny_random import MARKER_FILE, ensure_tiny_random, is_tiny_random

log = logging.getLogger("unimodel.local")

_ADVICE = ("pass --model PATH with a local checkpoint directory (config.json + safetensors, or Mistral's "
           "params.json + consolidated.safetensors), "
           "use --model tiny-random for a smoke test, or serve through another engine with "
           "--engine upstream --upstream URL")


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says what was tried and what to do."""


@dataclass
class LoadedModel:
    model: Any
    path: Path
    format: ModelFormat
    renderer: PromptRenderer
    device: Any  # torch.device
    dtype: Any  # torch.dtype
    max_model_len: int
    is_vision: bool
    is_tiny_random: bool
    config: Any

    @property
    def supports_images(self) -> bool:
        return self.is_vision and self.renderer.supports_images


def resolve_path(model: str, cache_dir: Path | None = None) -> tuple[Path, bool]:
    """The checkpoint directory for ``model`` and whether it is a built tiny-random checkpoint."""
    if is_tiny_random(model):
        try:
            return ensure_tiny_random(model, cache_dir), True
        except Exception as exc:
            raise ModelLoadError(f"building the {model} checkpoint failed: {exc}") from exc
    local = Path(model).expanduser()
    if local.is_dir():
        return local, (local / MARKER_FILE).is_file()
    if local.exists() or model.startswith((".", "/", "~")):
        raise ModelLoadError(f"--model {model!r} is not a checkpoint directory; {_ADVICE}")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model)), False
    except Exception as exc:
        raise ModelLoadError(
            f"--model {model!r} is not a local directory, and downloading it from the Hugging Face hub failed "
            f"({type(exc).__name__}: {exc}); {_ADVICE}"
        ) from exc


def pick_device(device: str) -> Any:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu")
    if device not in ("cpu", "cuda"):
        raise ModelLoadError(f"unknown --device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def pick_dtype(dtype: str, device: Any) -> Any:
    import torch

    table = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if dtype in table:
        return table[dtype]
    if dtype != "auto":
        raise ModelLoadError(f"unknown --dtype {dtype!r}; use auto, bfloat16, float16 or float32")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def model_class(config: dict[str, Any]) -> tuple[Any, bool]:
    """The transformers class for a ``config.json`` and whether it takes images."""
    import transformers

    model_type = config.get("model_type")
    if model_type == "mistral4":
        return transformers.Mistral4ForCausalLM, False
    if model_type == "mistral3":
        return transformers.Mistral3ForConditionalGeneration, True
    if "vision_config" in config:
        return transformers.AutoModelForImageTextToText, True
    return transformers.AutoModelForCausalLM, False


def context_length(config: Any, requested: int | None) -> int:
    text = getattr(config, "text_config", None) or config
    native = getattr(text, "max_position_embeddings", None) or 32768
    if requested is None:
        return int(native)
    if requested > native:
        log.warning("--max-model-len %d is above the model's max_position_embeddings %d", requested, native)
    return int(requested)


def load_model(
    model: str, *, device: str = "auto", dtype: str = "auto", max_model_len: int | None = None,
    cache_dir: Path | None = None, family: str | None = None,
) -> LoadedModel:
    """Resolve, load and place ``model`` (blocking: call it in a worker thread); ``family`` names its format
    (None: recognised from the checkpoint)."""
    path, tiny = resolve_path(model, cache_dir)
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    if is_native_checkpoint(path):
        loaded, is_vision = _load_native(path, torch_dtype, torch_device), False
    else:
        loaded, is_vision = _load_hf(path, torch_dtype, torch_device)
    fmt = get_format(family) if family else detect_format(path)
    renderer = _renderer(fmt, path)
    vocab = getattr(getattr(loaded.config, "text_config", None) or loaded.config, "vocab_size", None)
    if vocab is not None and renderer.vocab_size > vocab:
        raise ModelLoadError(f"{path}: the tokenizer has {renderer.vocab_size} ids but the model only {vocab}")
    return LoadedModel(
        model=loaded, path=path, format=fmt, renderer=renderer, device=torch_device, dtype=torch_dtype,
        max_model_len=context_length(loaded.config, max_model_len), is_vision=is_vision, is_tiny_random=tiny,
        config=loaded.config,
    )


def _load_hf(path: Path, torch_dtype: Any, torch_device: Any) -> tuple[Any, bool]:
    config_file = path / "config.json"
    if not config_file.is_file():
        found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
        raise ModelLoadError(
            f"{path} has no config.json (found: {found}); the local engine loads Hugging Face-format "
            f"checkpoints and Mistral's native format (params.json); {_ADVICE}"
        )
    try:
        raw_config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {config_file}: {exc}") from exc
    cls, is_vision = model_class(raw_config)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        loaded = cls.from_pretrained(str(path), dtype=torch_dtype)
        return loaded.to(torch_device).eval(), is_vision
    except Exception as exc:
        raise ModelLoadError(
            f"loading {path} with transformers.{getattr(cls, '__name__', cls)} (dtype {torch_dtype}, device "
            f"{torch_device}) failed: {type(exc).__name__}: {exc}; {_ADVICE}"
        ) from exc


def _load_native(path: Path, torch_dtype: Any, torch_device: Any) -> Any:
    try:
        return load_native(path, torch_dtype).to(torch_device).eval()
    except NativeFormatError as exc:
        raise ModelLoadError(f"{path} is a Mistral native checkpoint (params.json) that the local engine cannot "
                             f"load: {exc}; {_ADVICE}") from exc
    except Exception as exc:
        raise ModelLoadError(
            f"loading the Mistral native checkpoint {path} (dtype {torch_dtype}, device {torch_device}) failed: "
            f"{type(exc).__name__}: {exc}; {_ADVICE}"
        ) from exc


def _renderer(fmt: ModelFormat, path: Path) -> PromptRenderer:
    try:
        return fmt.load_renderer(path)
    except Exception as exc:
        raise ModelLoadError(
            f"the tokenizer of {path} cannot be loaded for the {fmt.name} model family: {type(exc).__name__}: "
            f"{exc}; {_ADVICE}"
        ) from exc
