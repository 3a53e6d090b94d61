from __future__ import annotations

import pytest

from unimodel.formats import MistralFormat, ModelFormat, ThinkTagsFormat, format_names, get_format
from unimodel.formats.jsonscan import JsonValueScanner, arguments_text, calls_from_json


def test_registry() -> None:
    assert format_names() == ["mistral", "think-tags"]
    assert isinstance(get_format("mistral"), MistralFormat)
    assert isinstance(get_format("Think_Tags"), ThinkTagsFormat)
    for name in format_names():
        fmt = get_format(name)
        assert isinstance(fmt, ModelFormat) and fmt.name == name
        assert fmt.special_token_names


def test_unknown_format_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="mistral, think-tags"):
        get_format("llama")


@pytest.mark.parametrize("value", ['{"a": "}\\"{", "b": [1, {"c": "]"}]}', "[1, [2], {}]", '{"x": "\\\\"}'])
def test_scanner_finds_the_end_however_fed(value: str) -> None:
    text = value + ' tail"{'
    for cut in range(1, len(text)):
        sc = JsonValueScanner()
        first = sc.feed(text[:cut])
        end = first if first is not None else cut + (sc.feed(text[cut:]) or -10**6)
        assert end == len(value)
        assert sc.value == value


def test_arguments_and_calls() -> None:
    assert arguments_text('{"a": 1}') == '{"a": 1}'
    assert arguments_text({"a": "é"}) == '{"a": "é"}'
    assert arguments_text("[1]") is None
    assert arguments_text('{"a": Infinity}') is None
    assert calls_from_json('{"name": "f", "parameters": {"x": 1}}') == [("f", '{"x": 1}', None)]
    assert calls_from_json('[{"name": "f"}]') == [("f", "{}", None)]
    assert calls_from_json('[{"name": "f"}, 3]') is None
    assert calls_from_json("[]") is None
