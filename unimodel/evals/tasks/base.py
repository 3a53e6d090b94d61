"""What every suite shares: a task with a known answer, the model's reply, and the checker's verdict."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # the JSON text, as the model wrote it


@dataclass(frozen=True)
class Reply:
    """What the endpoint answered, already joined from its stream."""

    content: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True)
class Task:
    """One question with a known answer.

    ``messages`` and ``request`` (extra fields such as ``tools`` or ``response_format``) are sent as they are;
    ``expected`` is what the suite's checker compares with (its type is the suite's: a number, a dict, a
    call, test code); ``reference`` is a reply the checker accepts, so every task is known to be solvable.
    """

    id: str
    suite: str
    messages: list[dict[str, Any]]
    expected: Any
    reference: Reply
    request: dict[str, Any] = field(default_factory=dict)

    @property
    def index(self) -> int:
        """The task's position in its suite (ids are ``suite-NNN``)."""
        return int(self.id.rsplit("-", 1)[1])


@dataclass(frozen=True)
class Verdict:
    correct: bool
    answer: str = ""  # what was extracted from the reply (shortened), for the report
    detail: str = ""  # why it is wrong, when it is


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    generate: Callable[[int, int], list[Task]]  # (samples, seed) -> tasks
    check: Callable[[Task, Reply], Verdict]
    # what the endpoint must take for the suite's requests to be answered at all (``requirements.NEEDS``'s
    # names: "images", "tools", "json_schema"); checked with one small request before the run
    needs: tuple[str, ...] = ()


def task_id(suite: str, index: int) -> str:
    return f"{suite}-{index:03d}"


def shorten(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def distinct(draw: Callable[[], T], key: Callable[[T], str], seen: set[str], tries: int = 100) -> T:
    """A draw whose key is not in ``seen`` yet (then added), so a suite does not ask one question twice; after
    ``tries`` draws, when the suite's space of questions is used up, a repeat."""
    for _ in range(tries):
        item = draw()
        if key(item) not in seen:
            break
    seen.add(key(item))
    return item
