"""tiny-scripted: its weights make greedy decoding follow the script the prompt picks (checked with transformers
here; against real vLLM in tests/vllm), and scripts that could not be followed are refused at build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unimodel.models.scripted import SCRIPTS, Script, compile_scripts
from unimodel.models.tiny_random import tekken_v15


@pytest.fixture(scope="module")
def tekkenizer(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from mistral_common.tokens.tokenizers.tekken import Tekkenizer

    path = tmp_path_factory.mktemp("tekken") / "tekken.json"
    path.write_text(json.dumps(tekken_v15(image=False)), encoding="utf-8")
    return Tekkenizer.from_file(str(path))


def test_a_token_twice_in_one_phase_is_refused(tekkenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="comes twice in one phase"):
        compile_scripts(tekkenizer, (Script("x", " Rome", "go table and table"),))


def test_a_selector_of_several_tokens_is_refused(tekkenizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="must be one"):
        compile_scripts(tekkenizer, (Script("x", " hedgehog", "hi"),))


def test_a_marker_in_another_script_is_refused(tekkenizer) -> None:  # type: ignore[no-untyped-def]
    scripts = (Script("a", " Rome", "one Paris two", markers=(" Paris",)), Script("b", " Madrid", "three Paris"))
    with pytest.raises(ValueError, match="marker"):
        compile_scripts(tekkenizer, scripts)


@pytest.mark.slow
def test_greedy_decoding_follows_every_script(tiny_cache_dir: Path, tekkenizer) -> None:  # type: ignore[no-untyped-def]
    import torch
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    from unimodel.models import ensure_tiny_random
    from unimodel.models.mistral_native import load_native

    directory = ensure_tiny_random("tiny-scripted", tiny_cache_dir)
    model = load_native(directory, torch.float32)
    tokenizer = MistralTokenizer.from_file(str(directory / "tekken.json"))
    compiled = compile_scripts(tekkenizer)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    for s in SCRIPTS:
        request = ChatCompletionRequest.from_openai([{"role": "user", "content": s.prompt}], tools=tools)
        ids = tokenizer.encode_chat_completion(request).tokens
        out = model.generate(torch.tensor([ids]), max_new_tokens=60, do_sample=False)
        assert out[0, len(ids):].tolist() == compiled.sequences[s.name], s.name
