"""Pick the right tool and fill its arguments (``tools``).

Every task offers the same four functions (``tool_choice: auto``) and asks for something exactly one of them
does, phrased so that an argument needs working out (a currency's code, a written date, hours into minutes).

Checked on the reply's first tool call (``tool_calls`` of the API; a call written as text does not count):
the function's name, arguments that decode to a JSON object with exactly the expected keys, and each value
equal to the known one (strings ignoring case and runs of whitespace, numbers by value).
"""

from __future__ import annotations

import calendar
import json
import random
from typing import Any

from unimodel.evals.tasks.base import Reply, Suite, Task, ToolCall, Verdict, distinct, shorten, task_id, user


def _function(name: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": properties, "required": list(properties),
                       "additionalProperties": False}}}


TOOLS: list[dict[str, Any]] = [
    _function("get_weather", "Current weather for a city.",
              {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}),
    _function("convert_currency", "Convert an amount between currencies (ISO 4217 codes such as USD).",
              {"amount": {"type": "number"}, "from_currency": {"type": "string"},
               "to_currency": {"type": "string"}}),
    _function("create_event", "Add an event to the user's calendar.",
              {"title": {"type": "string"}, "date": {"type": "string", "description": "YYYY-MM-DD"},
               "duration_minutes": {"type": "integer"}}),
    _function("set_timer", "Start a countdown timer.",
              {"minutes": {"type": "integer"}, "label": {"type": "string"}}),
]

CITIES = ["Paris", "Nairobi", "Osaka", "Lima", "Reykjavik", "Toronto", "Mumbai", "Melbourne", "Cairo", "Oslo",
          "Santiago", "Hanoi", "Lagos", "Denver", "Lisbon", "Seoul"]
CURRENCIES = {"euros": "EUR", "US dollars": "USD", "Japanese yen": "JPY", "British pounds": "GBP",
              "Swiss francs": "CHF", "Indian rupees": "INR"}
EVENTS = ["dentist appointment", "team offsite", "piano lesson", "tax deadline", "book club"]
LABELS = ["pasta", "laundry", "stretch break", "bread dough", "tea"]


def _weather(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    city, unit = rng.choice(CITIES), rng.choice(["celsius", "fahrenheit"])
    return f"What's the weather like in {city} right now? Give me the temperature in {unit}.", "get_weather", \
        {"city": city, "unit": unit}


def _currency(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    source, target = rng.sample(sorted(CURRENCIES), 2)
    amount = rng.randint(5, 5000)
    return f"How much is {amount} {source} in {target}?", "convert_currency", \
        {"amount": amount, "from_currency": CURRENCIES[source], "to_currency": CURRENCIES[target]}


def _event(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    year, month, day = rng.randint(2025, 2027), rng.randint(1, 12), rng.randint(1, 28)
    title, minutes = rng.choice(EVENTS), rng.choice([15, 30, 45, 60, 90, 120])
    return (f"Put '{title}' on my calendar for {calendar.month_name[month]} {day}, {year}; it lasts {minutes} "
            f"minutes."), "create_event", {"title": title, "date": f"{year:04d}-{month:02d}-{day:02d}",
                                           "duration_minutes": minutes}


def _timer(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    hours, minutes, label = rng.randint(1, 3), rng.randint(1, 59), rng.choice(LABELS)
    return f"Set a timer for {hours} hour{'s' if hours > 1 else ''} and {minutes} minutes, labelled '{label}'.", \
        "set_timer", {"minutes": hours * 60 + minutes, "label": label}


KINDS = [_weather, _currency, _event, _timer]


def generate(samples: int, seed: int) -> list[Task]:
    rng = random.Random(f"tools:{seed}")
    tasks, seen = [], set[str]()
    for i in range(samples):
        prompt, name, arguments = distinct(lambda: KINDS[i % len(KINDS)](rng), lambda t: t[0], seen)
        call = ToolCall(name, json.dumps(arguments))
        tasks.append(Task(id=task_id("tools", i), suite="tools", messages=user(prompt),
                          expected={"name": name, "arguments": arguments}, reference=Reply(tool_calls=(call,)),
                          request={"tools": TOOLS, "tool_choice": "auto"}))
    return tasks


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, str):
        return isinstance(got, str) and " ".join(got.split()).casefold() == want.casefold()
    return not isinstance(got, bool) and isinstance(got, (int, float)) and got == want


def check(task: Task, reply: Reply) -> Verdict:
    if not reply.tool_calls:
        return Verdict(False, shorten(reply.content), "no tool call")
    call = reply.tool_calls[0]
    shown = shorten(f"{call.name}({call.arguments})")
    if call.name != task.expected["name"]:
        return Verdict(False, shown, f"called {shorten(call.name, 40)}, expected {task.expected['name']}")
    try:
        arguments = json.loads(call.arguments or "{}")
    except json.JSONDecodeError:
        return Verdict(False, shown, "arguments are not JSON")
    if not isinstance(arguments, dict):
        return Verdict(False, shown, "arguments are not a JSON object")
    want = task.expected["arguments"]
    if set(arguments) != set(want):
        return Verdict(False, shown, f"argument names {sorted(arguments)}, expected {sorted(want)}")
    wrong = [key for key in want if not _same(arguments[key], want[key])]
    if wrong:
        return Verdict(False, shown, "wrong " + ", ".join(wrong))
    return Verdict(True, shown)


SUITE = Suite("tools", "tool calls checked on the function and its arguments", generate, check, needs=("tools",))
