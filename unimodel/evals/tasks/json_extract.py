"""Extract fields from a paragraph into JSON that fits a schema (``json``).

Each task describes an order or a meeting in prose (dates and times written out, so they need converting)
and asks for the fields as one JSON object. The schema is in the prompt and in ``response_format``
(``json_schema``, strict), as a client of a structured-output API would send it.

Checked in two steps: the first JSON object of the answer (:func:`~unimodel.evals.extract.first_json_object`)
must validate against the schema (``jsonschema``), and then every field must equal the known value: strings
ignoring case and runs of whitespace, numbers by value, booleans exactly, and the attendee list as a set of
names (its order is not asked for).
"""

from __future__ import annotations

import calendar
import json
import random
from typing import Any

from jsonschema import Draft202012Validator

from unimodel.evals.extract import first_json_object
from unimodel.evals.tasks.base import Reply, Suite, Task, Verdict, distinct, shorten, task_id, user

FIRST = ["Maria", "Kenji", "Aisha", "Lars", "Priya", "Tomás", "Chloé", "Dmitri", "Amara", "Wei"]
LAST = ["Lopez", "Tanaka", "Okafor", "Berg", "Sharma", "Silva", "Moreau", "Petrov", "Diallo", "Chen"]
PRODUCTS = ["blue widget", "steel bolt", "desk lamp", "USB cable", "notebook", "coffee grinder"]
TOPICS = ["budget review", "design sync", "hiring plan", "launch retro", "security audit"]
ROOMS = ["Atlas", "Birch", "Cobalt", "Delta", "Ember"]

ORDER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "order_id": {"type": "integer"},
        "customer": {"type": "string"},
        "product": {"type": "string"},
        "quantity": {"type": "integer"},
        "unit_price": {"type": "number"},
        "express": {"type": "boolean"},
    },
    "required": ["order_id", "customer", "product", "quantity", "unit_price", "express"],
    "additionalProperties": False,
}

MEETING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "date": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
        "start": {"type": "string", "pattern": r"^\d{2}:\d{2}$"},
        "room": {"type": "string"},
        "attendees": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["title", "date", "start", "room", "attendees"],
    "additionalProperties": False,
}


def _name(rng: random.Random) -> str:
    return f"{rng.choice(FIRST)} {rng.choice(LAST)}"


def _order(rng: random.Random) -> tuple[str, dict[str, Any], dict[str, Any]]:
    value = {"order_id": rng.randint(1000, 99999), "customer": _name(rng), "product": rng.choice(PRODUCTS),
             "quantity": rng.randint(1, 40), "unit_price": rng.randint(100, 9999) / 100,
             "express": rng.random() < 0.5}
    shipping = "by express delivery" if value["express"] else "with standard shipping"
    text = (f"Order #{value['order_id']} came in this morning: {value['customer']} wants {value['quantity']} "
            f"units of our {value['product']} at ${value['unit_price']:.2f} apiece, shipped {shipping}.")
    return text, ORDER_SCHEMA, value


def _meeting(rng: random.Random) -> tuple[str, dict[str, Any], dict[str, Any]]:
    year, month, day = rng.randint(2024, 2027), rng.randint(1, 12), rng.randint(1, 28)
    hour, minute = rng.randint(8, 17), rng.choice([0, 15, 30, 45])
    attendees = rng.sample([f"{f} {ln}" for f, ln in zip(FIRST, LAST)], rng.randint(2, 4))
    value = {"title": rng.choice(TOPICS), "date": f"{year:04d}-{month:02d}-{day:02d}",
             "start": f"{hour:02d}:{minute:02d}", "room": rng.choice(ROOMS), "attendees": attendees}
    clock = f"{(hour - 1) % 12 + 1}:{minute:02d} {'pm' if hour >= 12 else 'am'}"
    people = ", ".join(attendees[:-1]) + f" and {attendees[-1]}"
    text = (f"Reminder: the {value['title']} is on {day} {calendar.month_name[month]} {year}, starting at "
            f"{clock} in room {value['room']}. {people} will attend.")
    return text, MEETING_SCHEMA, value


def generate(samples: int, seed: int) -> list[Task]:
    rng = random.Random(f"json:{seed}")
    tasks, seen = [], set[str]()
    for i in range(samples):
        text, schema, value = distinct(lambda: (_order if i % 2 == 0 else _meeting)(rng), lambda t: t[0], seen)
        prompt = (f"Extract the fields from this text as one JSON object that matches the schema. Dates are "
                  f"YYYY-MM-DD, times 24-hour HH:MM.\n\nSchema:\n{json.dumps(schema)}\n\nText:\n{text}\n\n"
                  f"Reply with the JSON object only.")
        name = "order" if schema is ORDER_SCHEMA else "meeting"
        fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}
        tasks.append(Task(id=task_id("json", i), suite="json", messages=user(prompt), expected=value,
                          reference=Reply(content=json.dumps(value)), request={"response_format": fmt}))
    return tasks


def _norm(value: Any) -> Any:
    return " ".join(value.split()).casefold() if isinstance(value, str) else value


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want
    if isinstance(want, list):
        return isinstance(got, list) and sorted(map(_norm, got)) == sorted(map(_norm, want))
    return bool(_norm(got) == _norm(want))


def check(task: Task, reply: Reply) -> Verdict:
    found = first_json_object(reply.content)
    if found is None:
        return Verdict(False, shorten(reply.content), "no JSON object in the answer")
    shown = shorten(json.dumps(found, ensure_ascii=False))
    schema = task.request["response_format"]["json_schema"]["schema"]
    error = next(iter(Draft202012Validator(schema).iter_errors(found)), None)
    if error is not None:
        return Verdict(False, shown, f"does not fit the schema: {shorten(error.message, 120)}")
    wrong = [key for key, want in task.expected.items() if not _same(found[key], want)]
    if wrong:
        return Verdict(False, shown, "wrong " + ", ".join(wrong))
    return Verdict(True, shown)


SUITE = Suite("json", "JSON-schema extraction, checked against the schema and the known values", generate, check,
              needs=("json_schema",))
