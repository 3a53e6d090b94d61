"""Write a small Python function that passes hidden tests (``code``).

Each task is one of a few function specifications with seeded constants (which divisors, which characters,
which power); the tests are ``assert`` lines whose expected values come from running our reference solution
on seeded inputs, here, in process (it is our own code). The candidate is the reply's code block
(:func:`~unimodel.evals.extract.code_block`), run with the tests by :mod:`unimodel.evals.sandbox`: correct
means every assert held within the time and memory limits.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from typing import Any

from unimodel.evals.extract import code_block
from unimodel.evals.sandbox import Limits, run_tests
from unimodel.evals.tasks.base import Reply, Suite, Task, Verdict, distinct, shorten, task_id, user

INSTRUCTION = "Reply with the complete function in one ```python code block."

Spec = tuple[str, str, str, list[tuple[Any, ...]]]  # (function name, description, reference source, inputs)


def _pick(rng: random.Random) -> Spec:
    a, b = rng.choice([(a, b) for a in range(2, 10) for b in range(2, 10) if a % b])
    return ("pick", f"returns a list of the integers from 1 to n inclusive that are divisible by {a} but not by {b}",
            f"def pick(n):\n    return [i for i in range(1, n + 1) if i % {a} == 0 and i % {b} != 0]\n",
            [(n,) for n in [0, 1, a, a * b, *rng.sample(range(2, 80), 3)]])


def _count_chars(rng: random.Random) -> Spec:
    chars = "".join(sorted(rng.sample(string.ascii_lowercase, 4)))
    words = ["".join(rng.choice(string.ascii_letters + " ") for _ in range(rng.randint(0, 20))) for _ in range(5)]
    return ("count_chars", f"returns how many characters of the string s are one of the letters '{chars}', "
                           f"ignoring case",
            f"def count_chars(s):\n    return sum(1 for c in s.lower() if c in {chars!r})\n",
            [("",), (chars.upper(),), *[(w,) for w in words]])


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _rotate(rng: random.Random) -> Spec:
    k, direction = rng.randint(1, 9), rng.choice(["left", "right"])
    cases = [([],), ([1],)] + [([rng.randint(-9, 9) for _ in range(rng.randint(1, 12))],) for _ in range(5)]
    shift = f"-{k} % len(items)" if direction == "right" else f"{k} % len(items)"
    return ("rotate", f"returns a new list with the items of the list `items` rotated {direction} by {k} "
                      f"position{'s' if k > 1 else ''}, wrapping around as often as needed (an empty list stays "
                      f"empty)",
            f"def rotate(items):\n    if not items:\n        return []\n    k = {shift}\n"
            f"    return items[k:] + items[:k]\n", cases)


def _digit_power_sum(rng: random.Random) -> Spec:
    base, p = rng.randint(2, 9), rng.randint(1, 4)
    return ("digit_power_sum", f"returns the sum of every digit of the non-negative integer n written in base "
                               f"{base}, each digit raised to the power {p}",
            f"def digit_power_sum(n):\n    total = 0\n    while n:\n        n, d = divmod(n, {base})\n"
            f"        total += d ** {p}\n    return total\n",
            [(0,), (base - 1,), (base,), *[(rng.randint(10, 10**7),) for _ in range(4)]])


RUN_FORMATS = [("the character followed by the run's length, as in 'a3'", "{c}{n}"),
               ("the run's length followed by the character, as in '3a'", "{n}{c}"),
               ("the character, an 'x' and the run's length, as in 'ax3'", "{c}x{n}")]


def _compress(rng: random.Random) -> Spec:
    shortest = rng.randint(1, 4)
    said, shape = rng.choice(RUN_FORMATS)
    words = ["".join(c * rng.randint(1, 6) for c in rng.choices("abcxyz", k=rng.randint(1, 6))) for _ in range(5)]
    runs = "every run of one repeated character" if shortest == 1 else \
        f"every run of {shortest} or more of one repeated character"
    rest = "" if shortest == 1 else ", and shorter runs stay as they are"
    piece = "f'" + shape.replace("{c}", "{s[i]}").replace("{n}", "{j - i}") + "'"
    return ("compress", f"run-length encodes the string s: {runs} becomes {said}{rest} (the empty string gives the "
                        f"empty string)",
            f"def compress(s):\n    out = []\n    i = 0\n    while i < len(s):\n        j = i\n"
            f"        while j < len(s) and s[j] == s[i]:\n            j += 1\n"
            f"        out.append({piece} if j - i >= {shortest} else s[i:j])\n"
            f"        i = j\n    return ''.join(out)\n", [("",), ("a",), *[(w,) for w in words]])


def _nth_value(rng: random.Random) -> Spec:
    k, order = rng.randint(1, 5), rng.choice(["largest", "smallest"])
    cases = [([],), ([5] * 4,)] + [([rng.randint(-20, 20) for _ in range(rng.randint(1, 12))],) for _ in range(5)]
    return ("nth_value", f"returns the {_ordinal(k)} {order} distinct value in the list of integers nums (the 1st "
                         f"being the {order}), or None when it has fewer than {k} distinct values",
            f"def nth_value(nums):\n    values = sorted(set(nums), reverse={order == 'largest'})\n"
            f"    return values[{k - 1}] if len(values) >= {k} else None\n", cases)


SPECS: list[Callable[[random.Random], Spec]] = [_pick, _count_chars, _rotate, _digit_power_sum, _compress,
                                                _nth_value]


def _tests(name: str, reference: str, inputs: list[tuple[Any, ...]]) -> str:
    namespace: dict[str, Any] = {}
    exec(compile(reference, f"<reference {name}>", "exec"), namespace)  # our own code, to know the answers
    lines = []
    for args in inputs:
        call = f"{name}({', '.join(map(repr, args))})"
        lines.append(f"assert {call} == {namespace[name](*args)!r}, {call!r}")
    return "\n".join(lines) + "\n"


def generate(samples: int, seed: int) -> list[Task]:
    rng = random.Random(f"code:{seed}")
    tasks, seen = [], set[str]()
    for i in range(samples):
        name, description, reference, inputs = distinct(lambda: SPECS[i % len(SPECS)](rng), lambda s: s[1], seen)
        prompt = f"Write a Python function `{name}` that {description}.\n{INSTRUCTION}"
        tasks.append(Task(id=task_id("code", i), suite="code", messages=user(prompt),
                          expected=_tests(name, reference, inputs),
                          reference=Reply(content=f"```python\n{reference}```")))
    return tasks


def checker(limits: Limits) -> Callable[[Task, Reply], Verdict]:
    def check(task: Task, reply: Reply) -> Verdict:
        code = code_block(reply.content)
        if code is None:
            return Verdict(False, shorten(reply.content), "no code block in the answer")
        outcome = run_tests(code, task.expected, limits)
        return Verdict(outcome.passed, shorten(code), "" if outcome.passed else f"{outcome.status}: {outcome.detail}")

    return check


def suite(limits: Limits = Limits()) -> Suite:
    return Suite("code", "small functions checked by running their tests in a sandbox", generate, checker(limits))
