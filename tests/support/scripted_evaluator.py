"""A scripted upstream that answers ``unimodel eval``'s tasks right for a known share, at known token costs.

The eval's end-to-end tests point ``unimodel eval`` at it (directly, or through a unimodel server in front of
it) and check the report's figures against numbers known in advance. It is the stdlib
:class:`~tests.support.scripted_upstream.ScriptedUpstream` with one model, ``evaluator``, whose script is
chosen per request (``Script.respond``): the task is found by its prompt (the user messages' text and image
URLs) among the tasks the eval generates for the same suites, samples and seed, and then

- it is answered **right** when ``task.index % 10 < SHARE[effort]`` (with the effort the upstream is sent):
  with 10 tasks per suite, exactly 3, 5 or 7 of each suite for ``none``, ``low``, ``high``; otherwise with a
  near miss (the number plus one, one JSON field or tool argument off, code that fails its tests);
- it **thinks** ``THINK[effort]`` reasoning tokens and answers in one token (a tool call in two: its name and
  its arguments): frames of ``CHUNK`` characters, and the scripted upstream counts one token a frame.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from tests.support.scripted_upstream import Script, ScriptedUpstream
from unimodel.evals.tasks import Reply, Task, ToolCall

MODEL = "evaluator"
SHARE = {"none": 3, "low": 5, "high": 7}  # of every ten tasks of a suite, answered right
THINK = {"none": 0, "low": 4, "high": 16}  # reasoning tokens per answer
CHUNK = 2048  # characters a frame: longer than any answer, so an answer is one frame


def prompt_key(messages: Sequence[dict[str, Any]]) -> str:
    parts: list[str] = []
    for message in messages:
        if message.get("role") != "user":
            continue
        content = message.get("content")
        for part in [{"type": "text", "text": content}] if isinstance(content, str) else content or []:
            parts.append(part.get("text") or (part.get("image_url") or {}).get("url") or "")
    return "\n".join(parts)


def _off_by_one(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, list):
        return value[:-1]
    return f"{value} (not)"


def wrong_reply(task: Task) -> Reply:
    if task.suite in ("math", "vision"):
        return Reply(content=f"Answer: {task.expected + 1}")
    if task.suite == "json":
        first = next(iter(task.expected))
        return Reply(content=json.dumps({**task.expected, first: _off_by_one(task.expected[first])}))
    if task.suite == "tools":
        arguments = dict(task.expected["arguments"])
        first = next(iter(arguments))
        arguments[first] = _off_by_one(arguments[first])
        return Reply(tool_calls=(ToolCall(task.expected["name"], json.dumps(arguments)),))
    if task.suite == "code":
        return Reply(content="```python\ndef not_the_function_asked_for():\n    return None\n```")
    raise ValueError(f"no wrong answer for suite {task.suite}")


class Answerer:
    """``Script.respond``: the scripted answer to one request body."""

    def __init__(self, tasks: Sequence[Task]) -> None:
        self.by_prompt = {prompt_key(t.messages): t for t in tasks}
        self.efforts_seen: list[str] = []

    @staticmethod
    def right(task: Task, effort: str) -> bool:
        return task.index % 10 < SHARE[effort]

    def __call__(self, body: dict[str, Any]) -> Script:
        task = self.by_prompt.get(prompt_key(body.get("messages") or []))
        effort = body.get("reasoning_effort", "none")
        if task is None or effort not in SHARE:
            return Script(error_status=400, error_message=f"not an eval task, or an unknown effort {effort!r}")
        self.efforts_seen.append(effort)
        reply = task.reference if self.right(task, effort) else wrong_reply(task)
        assert max(len(reply.content), *(len(c.arguments) for c in reply.tool_calls), 0) <= CHUNK
        return Script(mode="parsed", reasoning="t" * (CHUNK * THINK[effort]), content=reply.content,
                      tool_calls=[(c.name, c.arguments) for c in reply.tool_calls], chunk_chars=CHUNK)


def evaluator_upstream(tasks: Sequence[Task]) -> tuple[ScriptedUpstream, Answerer]:
    """A scripted upstream serving ``evaluator`` (not yet started: use it as a context manager)."""
    answerer = Answerer(tasks)
    return ScriptedUpstream({MODEL: replace(Script(), respond=answerer)}), answerer
