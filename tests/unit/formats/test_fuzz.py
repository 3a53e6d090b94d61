"""Random outputs built from marker fragments: never a crash, and the same message however cut."""

from __future__ import annotations

import random

import pytest

from unimodel.formats import format_names, get_format

from .folding import cuts, feed_chunks, fold

PIECES = {
    "mistral": ["[THINK]", "[/THINK]", "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]", "</s>", "[", "]", "[TH", "f", "ab1",
                " ", "\n", "{", "}", '"', "\\", ":", ",", '{"a": 1}', '{"s": "}"}', '[{"name": "g"}]', "é", "x y"],
    "think-tags": ["<think>", "</think>", "<tool_call>", "</tool_call>", "<|im_end|>", "<", ">", "</", "<thi", " ",
                   "\n", "{", "}", '"', "\\", '{"name": "f", "arguments": {}}', '{"name": "g"}', "[", "]", "é"],
}


@pytest.mark.parametrize("name", format_names())
@pytest.mark.parametrize("seed", range(40))
def test_random_outputs(name: str, seed: int) -> None:
    rng = random.Random(seed)
    fmt = get_format(name)
    text = "".join(rng.choice(PIECES[name]) for _ in range(rng.randint(1, 14)))
    for reason in ("stop", "length"):
        for starts in (False, True):
            expected = fold(feed_chunks(fmt, [text], reason, starts_in_reasoning=starts))
            assert fold(feed_chunks(fmt, list(text), reason, starts_in_reasoning=starts)) == expected, text
            for chunks in cuts(text, 2):
                assert fold(feed_chunks(fmt, chunks, reason, starts_in_reasoning=starts)) == expected, chunks
            for _ in range(30):
                points = sorted(rng.randint(0, len(text)) for _ in range(rng.randint(1, 6)))
                chunks = [text[a:b] for a, b in zip([0, *points], [*points, len(text)])]
                assert fold(feed_chunks(fmt, chunks, reason, starts_in_reasoning=starts)) == expected, chunks
