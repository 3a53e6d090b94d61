"""The documented answer-extraction rules, one case each, and the cases that must not match."""

from __future__ import annotations

from decimal import Decimal

import pytest

from unimodel.evals.extract import code_block, first_json_object, last_number


@pytest.mark.parametrize("text, number", [
    ("Answer: 42", "42"),
    ("3 + 4 = 7", "7"),
    ("The total is 1,234 dollars.", "1234"),
    ("It drops to -17 degrees", "-17"),
    ("about 2.50 each", "2.50"),
    ("Work: 12 × 3 = 36, minus 5\nAnswer: **31**\nChecked with 2 methods.", "31"),
    ("first \\boxed{12} then \\boxed{-8} and 99", "-8"),
    ("final answer 5 (I used 3 steps)", "3"),  # the last number of the answer line, as documented
    ("x2 and 10-3", "3"),  # a number glued to a word is not one; 10-3 reads as 10 and 3
])
def test_last_number(text: str, number: str) -> None:
    assert last_number(text) == Decimal(number)


@pytest.mark.parametrize("text", ["", "no digits here", "v2beta"])
def test_no_number(text: str) -> None:
    assert last_number(text) is None


def test_first_json_object_skips_what_does_not_decode() -> None:
    assert first_json_object('Here: {not json} then ```json\n{"a": {"b": [1, 2]}}\n``` and {"c": 3}') == \
        {"a": {"b": [1, 2]}}
    assert first_json_object("[1, 2] {\"x\": null}") == {"x": None}
    assert first_json_object('{"cut": "short') is None
    assert first_json_object("[1, 2]") is None


def test_code_block_prefers_python_then_any_fence_then_bare_code() -> None:
    assert code_block("```text\nnot this\n```\n```python\ndef f():\n    return 1\n```") == "def f():\n    return 1\n"
    assert code_block("```\ndef g(): pass\n```") == "def g(): pass\n"
    assert code_block("Sure:\n```py\ndef h():\n    return 2") == "def h():\n    return 2"  # cut by max_tokens
    assert code_block("def k(x):\n    return x\n") == "def k(x):\n    return x\n"
    assert code_block("x = 1") is None
    assert code_block("just words, not code") is None
