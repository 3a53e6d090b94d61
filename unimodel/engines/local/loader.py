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

Every failure is a :class:`ModelLoadError` saying what was tried and what to do next. Progress goes to a
:class:`~.load_progress.LoadProgress` (the log, and ``/ready``): where the checkpoint comes from and its size,
then the phases ``tokenizer`` (config and tokenizer, read first so a broken tokenizer fails before minutes of
weights), ``weights`` (per shard where we read them: the native format), ``convert`` (native only),
``device``; the engine adds ``warm-up``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unimodel.engines.local.load_progress import LoadProgress, describe_size
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


def resolve_path(model: str, cache_dir: Path | None = None,
                 progress: LoadProgress | None = None) -> tuple[Path, bool]:
    """The checkpoint directory for ``model`` and whether it is a built tiny-random checkpoint; ``progress`` is
    told where it comes from (phase ``resolve``, or ``download`` for a hub checkpoint not in the cache)."""
    if is_tiny_random(model):
        if progress is not None:
            progress.phase("resolve", "a built test checkpoint, from the cache (built on first use)")
        try:
            return ensure_tiny_random(model, cache_dir), True
        except Exception as exc:
            raise ModelLoadError(f"building the {model} checkpoint failed: {exc}") from exc
    local = Path(model).expanduser()
    if local.is_dir():
        if progress is not None:
            progress.phase("resolve", f"the local directory {local}")
        return local, (local / MARKER_FILE).is_file()
    if local.exists() or model.startswith((".", "/", "~")):
        raise ModelLoadError(f"--model {model!r} is not a checkpoint directory; {_ADVICE}")
    try:
        from huggingface_hub import snapshot_download

        try:  # in the hub's cache already: no download, and the log says so
            cached = Path(snapshot_download(model, local_files_only=True))
        except Exception:
            cached = None
        if cached is not None:
            if progress is not None:
                progress.phase("resolve", f"the Hugging Face cache, {cached}")
            return cached, False
        if progress is not None:
            progress.phase("download", "from the Hugging Face hub (not in its cache yet)")
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
    cache_dir: Path | None = None, family: str | None = None, progress: LoadProgress | None = None,
) -> LoadedModel:
    """Resolve, load and place ``model`` (blocking: call it in a worker thread); ``family`` names its format
    (None: recognised from the checkpoint); ``progress`` is told each phase (the caller finishes it)."""
    progress = progress if progress is not None else LoadProgress(model)
    path, tiny = resolve_path(model, cache_dir, progress)
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(dtype, torch_device)
    native = is_native_checkpoint(path)
    shards = _weight_files(path)
    log.info("loading %s from %s: %s in %d weight file%s, %s format, to %s as %s", model, path,
             describe_size(_size(shards)), len(shards), "" if len(shards) == 1 else "s",
             "Mistral's native" if native else "Hugging Face", torch_device, str(torch_dtype).removeprefix("torch."))
    progress.phase("tokenizer", "config and tokenizer")
    hf_class = None if native else _hf_class(path)
    fmt = get_format(family) if family else detect_format(path)
    renderer = _renderer(fmt, path)
    if hf_class is None:
        loaded, is_vision = _load_native(path, torch_dtype, torch_device, progress, len(shards)), False
    else:
        loaded, is_vision = _load_hf(path, hf_class, torch_dtype, torch_device, progress, len(shards))
    vocab = getattr(getattr(loaded.config, "text_config", None) or loaded.config, "vocab_size", None)
    if vocab is not None and renderer.vocab_size > vocab:
        raise ModelLoadError(f"{path}: the tokenizer has {renderer.vocab_size} ids but the model only {vocab}")
    return LoadedModel(
        model=loaded, path=path, format=fmt, renderer=renderer, device=torch_device, dtype=torch_dtype,
        max_model_len=context_length(loaded.config, max_model_len), is_vision=is_vision, is_tiny_random=tiny,
        config=loaded.config,
    )


def _weight_files(path: Path) -> list[Path]:
    """The checkpoint's weight files (safetensors, else PyTorch bins), for the size and shard count logged."""
    try:
        files = sorted(p for p in path.glob("*.safetensors") if p.is_file())
        return files or sorted(p for p in path.glob("*.bin") if p.is_file())
    except OSError:
        return []


def _size(files: list[Path]) -> int:
    total = 0
    for file in files:
        try:
            total += file.stat().st_size
        except OSError:
            pass
    return total


def _hf_class(path: Path) -> tuple[Any, bool]:
    """The transformers class of a Hugging Face checkpoint (from its ``config.json``) and whether it takes
    images."""
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
    return model_class(raw_config)


def _load_hf(path: Path, hf_class: tuple[Any, bool], torch_dtype: Any, torch_device: Any, progress: LoadProgress,
             shards: int) -> tuple[Any, bool]:
    cls, is_vision = hf_class
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        # transformers reads the shards itself (its progress is a tqdm bar, off): the phase has no count
        progress.phase("weights", f"{shards} file{'' if shards == 1 else 's'} with transformers.{cls.__name__}")
        loaded = cls.from_pretrained(str(path), dtype=torch_dtype)
        progress.phase("device", f"to {torch_device}")
        return loaded.to(torch_device).eval(), is_vision
    except Exception as exc:
        raise ModelLoadError(
            f"loading {path} with transformers.{getattr(cls, '__name__', cls)} (dtype {torch_dtype}, device "
            f"{torch_device}) failed: {type(exc).__name__}: {exc}; {_ADVICE}"
        ) from exc


def _load_native(path: Path, torch_dtype: Any, torch_device: Any, progress: LoadProgress, shards: int) -> Any:
    def report(phase: str, done: int, total: int) -> None:
        if phase != progress.current:
            progress.phase(phase, "to transformers' Mistral4ForCausalLM" if phase == "convert" else "", total)
        if total:
            progress.step(done, total)

    try:
        progress.phase("weights", f"{shards} consolidated*.safetensors file{'' if shards == 1 else 's'}", shards)
        model = load_native(path, torch_dtype, report)
        progress.phase("device", f"to {torch_device}")
        return model.to(torch_device).eval()
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
