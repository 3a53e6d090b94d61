"""The format API engines use: markers as ids, where thinking starts, grammar pieces, the family of a checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from unimodel.formats import FormatMarkers, detect_format, get_format
from unimodel.formats.grammar import ThinkingGrammar, build_grammar, json_answer

MISTRAL, THINK_TAGS = get_format("mistral"), get_format("think-tags")


class Vocabulary:
    """A tokenizer that has exactly these single tokens."""

    def __init__(self, ids: dict[str, int]) -> None:
        self.ids = ids

    def single_token_id(self, text: str) -> int | None:
        return self.ids.get(text)


MISTRAL_VOCAB = Vocabulary({"[THINK]": 34, "[/THINK]": 35, "[TOOL_CALLS]": 9, "[ARGS]": 32, "[CALL_ID]": 33,
                            "</s>": 2, "[INST]": 3})
TAGS_VOCAB = Vocabulary({"<think>": 100, "</think>": 101, "<tool_call>": 102, "</tool_call>": 103,
                         "<|im_end|>": 7})


def test_markers_are_the_family_s_ids_in_the_tokenizer() -> None:
    m = MISTRAL.markers(MISTRAL_VOCAB, exclude={2})
    assert (m.think_open, m.think_close, m.tool_call) == (34, 35, 9) and m.thinking == (34, 35)
    assert m.by_text == {"[THINK]": 34, "[/THINK]": 35, "[TOOL_CALLS]": 9, "[ARGS]": 32, "[CALL_ID]": 33}
    t = THINK_TAGS.markers(TAGS_VOCAB, exclude={7})
    assert (t.think_open, t.think_close, t.tool_call) == (100, 101, 102) and 7 not in t.ids
    assert THINK_TAGS.markers(MISTRAL_VOCAB, exclude={2}) == FormatMarkers()  # no tags: nothing at all
    assert FormatMarkers().thinking is None


@pytest.mark.parametrize(("prompt", "opened"), [
    ([5, 6, 7, 100], True),          # the generation prompt ends with <think>
    ([5, 7, 100, 50, 51], True),     # ... or a continued message opened it
    ([5, 7, 100, 50, 101, 52], False),  # closed
    ([100, 50, 7, 60], False),       # typed by the user, behind a turn delimiter
    ([5, 6], False),
])
def test_prompt_opens_thinking(prompt: list[int], opened: bool) -> None:
    markers = THINK_TAGS.markers(TAGS_VOCAB)
    assert THINK_TAGS.prompt_opens_thinking(prompt, markers, control_ids={5, 7}) is opened
    assert THINK_TAGS.prompt_opens_thinking(prompt, FormatMarkers(), control_ids={5, 7}) is False


def test_grammar_shapes() -> None:
    thinking = ThinkingGrammar(100, 101, "/x?/")
    answer = json_answer({"type": "object"})
    assert build_grammar(answer, thinking, "off", {7}).startswith("start: answer\nanswer: %json {")
    assert build_grammar(answer, None, "opened", {7}).startswith("start: answer\n")
    optional = build_grammar(answer, thinking, "optional", {7})
    assert optional.startswith("start: thinking? answer\nthinking: <[100]> <[^101,7]>* <[101]> /x?/\n")
    assert build_grammar(answer, thinking, "opened", {7, 3}).startswith("start: <[^101,3,7]>* <[101]> /x?/ answer\n")


def test_thinking_grammar_is_the_family_s() -> None:
    assert MISTRAL.thinking_grammar(MISTRAL.markers(MISTRAL_VOCAB)) == ThinkingGrammar(34, 35, "")
    assert THINK_TAGS.thinking_grammar(THINK_TAGS.markers(TAGS_VOCAB)) == ThinkingGrammar(100, 101,
                                                                                          r"/[\r\n]{0,4}/")
    assert THINK_TAGS.thinking_grammar(FormatMarkers()) is None


def test_tool_call_grammars() -> None:
    tools = [("a", {"type": "object"}), ("b", {"type": "object", "properties": {"x": {"type": "integer"}}})]
    mistral = MISTRAL.tool_call_grammar(MISTRAL.markers(MISTRAL_VOCAB), tools, at_most_one=False)
    assert mistral is not None and mistral.startswith("answer: call+\ncall: <[9]> ( \"a\" <[32]> %json {")
    assert '"b" <[32]> %json' in mistral
    one = MISTRAL.tool_call_grammar(MISTRAL.markers(MISTRAL_VOCAB), tools[:1], at_most_one=True)
    assert one is not None and one.startswith("answer: call\n")
    tags = THINK_TAGS.tool_call_grammar(THINK_TAGS.markers(TAGS_VOCAB), tools, at_most_one=False)
    assert tags is not None and tags.startswith('answer: call ("\\n" call)*\ncall: <[102]> "\\n" %json {"anyOf"')
    assert tags.rstrip().endswith('"\\n" <[103]>') and '"const": "b"' in tags
    # the tokenizer lacks the markers: no grammar, and the engine answers 400
    no_args = Vocabulary({k: v for k, v in MISTRAL_VOCAB.ids.items() if k != "[ARGS]"})
    assert MISTRAL.tool_call_grammar(MISTRAL.markers(no_args), tools, at_most_one=False) is None
    assert THINK_TAGS.tool_call_grammar(FormatMarkers(), tools, at_most_one=False) is None


def test_the_family_of_a_checkpoint(tmp_path: Path) -> None:
    assert detect_format(tmp_path) is THINK_TAGS
    (tmp_path / "tekken.json").write_text("{}")
    assert detect_format(tmp_path) is MISTRAL and MISTRAL.recognises(tmp_path)


def test_formats_import_no_heavy_library() -> None:
    code = ("import sys, unimodel.formats, unimodel.formats.render, unimodel.formats.grammar, "
            "unimodel.formats.mistral_render, unimodel.formats.chat_template; "
            "print(sorted(m for m in ('torch', 'transformers', 'llguidance', "
            "'mistral_common.tokens.tokenizers.mistral') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"
