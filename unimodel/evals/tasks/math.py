"""Arithmetic and word problems with exact integer answers (``math``).

Even-numbered tasks are arithmetic expressions, odd ones word problems from a few templates; every number is
drawn from ``random.Random(f"math:{seed}")``, and the answer is computed with Python integers, so it is exact.
The reply's number is found by :func:`unimodel.evals.extract.last_number`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from decimal import Decimal

from unimodel.evals.extract import last_number
from unimodel.evals.tasks.base import Reply, Suite, Task, Verdict, distinct, shorten, task_id, user

INSTRUCTION = ("Think it through if you need to, then give the final answer as a single number on the last "
               "line, in the form 'Answer: <number>'.")


def _arithmetic(rng: random.Random) -> tuple[str, int]:
    a, b, c, d = (rng.randint(2, 99) for _ in range(4))
    forms: list[tuple[str, int]] = [
        (f"({a} × {b}) − {c} + {d}", a * b - c + d),
        (f"{a} × ({b} + {c}) − {d}", a * (b + c) - d),
        (f"({a} + {b}) × ({c} − {d})", (a + b) * (c - d)),
        (f"{a * b} ÷ {b} + {c} × {d}", a + c * d),
    ]
    expression, value = forms[rng.randrange(len(forms))]
    return f"Compute {expression}.", value


def _cookies(rng: random.Random) -> tuple[str, int]:
    trays, per_tray = rng.randint(3, 12), rng.randint(6, 24)
    sold = rng.randint(1, trays * per_tray // 2)
    given = rng.randint(1, trays * per_tray - sold - 1)
    return (f"A baker makes {trays} trays of {per_tray} cookies each. She sells {sold} cookies and gives away "
            f"{given}. How many cookies does she have left?", trays * per_tray - sold - given)


def _train(rng: random.Random) -> tuple[str, int]:
    v, h, w, k = rng.randint(40, 160), rng.randint(1, 6), rng.randint(40, 160), rng.randint(1, 6)
    return (f"A train travels at {v} km/h for {h} hours, then at {w} km/h for {k} hours. How many kilometres "
            f"does it travel in total?", v * h + w * k)


def _marbles(rng: random.Random) -> tuple[str, int]:
    bags, per_bag, friends = rng.randint(2, 9), rng.randint(3, 12), rng.randint(2, 8)
    each = rng.randint(bags * per_bag // friends + 1, bags * per_bag // friends + 20)
    start = each * friends - bags * per_bag
    return (f"Tom has {start} marbles. He buys {bags} bags of {per_bag} marbles each, then shares all his "
            f"marbles equally among {friends} friends, with none left over. How many marbles does each friend "
            f"get?", each)


def _change(rng: random.Random) -> tuple[str, int]:
    price, count = rng.randint(2, 15), rng.randint(2, 9)
    bill = next(b for b in (20, 50, 100, 200) if b > price * count)
    return (f"Pens cost {price} dollars each. Anna buys {count} pens and pays with a {bill} dollar bill. How "
            f"many dollars of change does she get?", bill - price * count)


WORD_PROBLEMS: list[Callable[[random.Random], tuple[str, int]]] = [_cookies, _train, _marbles, _change]


def generate(samples: int, seed: int) -> list[Task]:
    rng = random.Random(f"math:{seed}")
    tasks, seen = [], set[str]()
    for i in range(samples):
        kind = _arithmetic if i % 2 == 0 else WORD_PROBLEMS[rng.randrange(len(WORD_PROBLEMS))]
        question, answer = distinct(lambda: kind(rng), lambda qa: qa[0], seen)
        tasks.append(Task(id=task_id("math", i), suite="math", messages=user(f"{question}\n{INSTRUCTION}"),
                          expected=answer, reference=Reply(content=f"Answer: {answer}")))
    return tasks


def check(task: Task, reply: Reply) -> Verdict:
    found = last_number(reply.content)
    if found is None:
        return Verdict(False, "", "no number in the answer")
    shown = shorten(str(found))
    if found == Decimal(task.expected):
        return Verdict(True, shown)
    return Verdict(False, shown, f"expected {task.expected}")


SUITE = Suite("math", "arithmetic and word problems with exact answers", generate, check)
