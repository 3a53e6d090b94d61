"""Loading: which class for which checkpoint, and load errors that say what was tried and what to do."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
import torch
import transformers

from unimodel.engines.local.loader import ModelLoadError, load_model, model_class, pick_device, pick_dtype, resolve_path


def test_mistral_classes_are_picked_by_model_type() -> None:
    assert model_class({"model_type": "mistral4"}) == (transformers.Mistral4ForCausalLM, False)
    assert model_class({"model_type": "mistral3"}) == (transformers.Mistral3ForConditionalGeneration, True)
    assert model_class({"model_type": "llama"}) == (transformers.AutoModelForCausalLM, False)
    assert model_class({"model_type": "x", "vision_config": {}}) == (transformers.AutoModelForImageTextToText, True)


def test_device_and_dtype() -> None:
    cpu = pick_device("cpu")
    assert pick_dtype("auto", cpu) == torch.float32 and pick_dtype("bfloat16", cpu) == torch.bfloat16
    with pytest.raises(ModelLoadError, match="--dtype"):
        pick_dtype("int3", cpu)
    with pytest.raises(ModelLoadError, match="--device"):
        pick_device("tpu")


def test_tiny_random_resolves_to_the_cache(tiny_cache_dir: Path, tiny_path: Path) -> None:
    assert resolve_path("tiny-random", tiny_cache_dir) == (tiny_path, True)
    assert resolve_path(str(tiny_path), tiny_cache_dir) == (tiny_path, True)


def test_missing_local_path_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as err:
        resolve_path(str(tmp_path / "nope"))
    assert "--model PATH" in str(err.value) and "--engine upstream" in str(err.value)


def test_hub_failure_says_what_was_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(repo_id: str) -> str:
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelLoadError) as err:
        resolve_path("mistralai/Some-Model")
    text = str(err.value)
    assert "Hugging Face hub" in text and "network unreachable" in text and "--engine upstream" in text


def test_directory_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path), device="cpu")
