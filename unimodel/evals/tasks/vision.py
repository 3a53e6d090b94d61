"""Questions about generated images (``vision``): count the shapes, read the digit.

Images are drawn with Pillow from ``random.Random(f"vision:{seed}")``: even-numbered tasks scatter 1-9 shapes of
the asked kind among 0-4 of another kind on a grid (so none overlap); odd ones draw one large seven-segment
digit. They travel as ``data:image/png`` URIs. The reply's number is found by
:func:`~unimodel.evals.extract.last_number`.
"""

from __future__ import annotations

import base64
import io
import random
from decimal import Decimal
from typing import Any

from PIL import Image, ImageDraw

from unimodel.evals.extract import last_number
from unimodel.evals.tasks.base import Reply, Suite, Task, Verdict, distinct, shorten, task_id

SIZE = 320
CELL = SIZE // 4
SHAPES = ("circle", "square", "triangle")
# seven segments: top, top right, bottom right, bottom, bottom left, top left, middle
SEGMENTS = {0: "abcdef", 1: "bc", 2: "abged", 3: "abgcd", 4: "fgbc", 5: "afgcd", 6: "afgedc", 7: "abc",
            8: "abcdefg", 9: "abcdfg"}
COLORS = [(220, 40, 40), (30, 90, 200), (30, 150, 60), (140, 50, 160), (230, 130, 20), (20, 20, 20)]


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cell: int, rng: random.Random) -> None:
    radius = rng.randint(18, 28)
    cx = (cell % 4) * CELL + CELL // 2 + rng.randint(-8, 8)
    cy = (cell // 4) * CELL + CELL // 2 + rng.randint(-8, 8)
    color = rng.choice(COLORS)
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if kind == "circle":
        draw.ellipse(box, fill=color)
    elif kind == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=color)


def _count(rng: random.Random) -> tuple[str, str, int]:
    target, other = rng.sample(SHAPES, 2)
    count, distractors = rng.randint(1, 9), rng.randint(0, 4)
    cells = rng.sample(range(16), count + distractors)
    image = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(image)
    for i, cell in enumerate(cells):
        _draw_shape(draw, target if i < count else other, cell, rng)
    return f"How many {target}s are in this image? Answer with the number alone.", _data_uri(image), count


def _digit(rng: random.Random) -> tuple[str, str, int]:
    digit = rng.randint(0, 9)
    image = Image.new("RGB", (SIZE, SIZE), "white")
    draw = ImageDraw.Draw(image)
    width, height, thick = 120, 220, 22
    left, top = (SIZE - width) // 2 + rng.randint(-30, 30), (SIZE - height) // 2 + rng.randint(-20, 20)
    right, middle, bottom = left + width, top + height // 2, top + height
    lines = {"a": ((left, top), (right, top)), "b": ((right, top), (right, middle)),
             "c": ((right, middle), (right, bottom)), "d": ((left, bottom), (right, bottom)),
             "e": ((left, middle), (left, bottom)), "f": ((left, top), (left, middle)),
             "g": ((left, middle), (right, middle))}
    color = rng.choice(COLORS)
    half = thick // 2
    for segment in SEGMENTS[digit]:  # each segment a bar reaching over the corners, so they join squarely
        (x0, y0), (x1, y1) = lines[segment]
        draw.rectangle((x0 - half, y0 - half, x1 + half, y1 + half), fill=color)
    return "What digit is shown in this image? Answer with the digit alone.", _data_uri(image), digit


def generate(samples: int, seed: int) -> list[Task]:
    rng = random.Random(f"vision:{seed}")
    tasks, seen = [], set[str]()
    for i in range(samples):
        question, uri, answer = distinct(lambda: (_count if i % 2 == 0 else _digit)(rng), lambda t: t[1], seen)
        content: list[dict[str, Any]] = [{"type": "text", "text": question},
                                         {"type": "image_url", "image_url": {"url": uri}}]
        tasks.append(Task(id=task_id("vision", i), suite="vision", messages=[{"role": "user", "content": content}],
                          expected=answer, reference=Reply(content=f"Answer: {answer}")))
    return tasks


def check(task: Task, reply: Reply) -> Verdict:
    found = last_number(reply.content)
    if found is None:
        return Verdict(False, shorten(reply.content), "no number in the answer")
    shown = shorten(str(found))
    if found == Decimal(task.expected):
        return Verdict(True, shown)
    return Verdict(False, shown, f"expected {task.expected}")


SUITE = Suite("vision", "generated images: count the shapes, read the digit", generate, check, needs=("images",))
