"""The suites: seeded and distinct, every reference answer accepted, near misses and malformed answers refused."""

from __future__ import annotations

import json

import pytest

from tests.support.scripted_evaluator import prompt_key, wrong_reply
from unimodel.evals.tasks import SUITE_NAMES, Reply, Task, ToolCall, build_suites, generate

SUITES = build_suites(SUITE_NAMES)
TASKS = generate(SUITES, 12, seed=7)


def test_the_same_seed_gives_the_same_tasks_and_another_seed_others() -> None:
    assert generate(SUITES, 12, seed=7) == TASKS
    other = generate(SUITES, 12, seed=8)
    assert [t.id for t in other] == [t.id for t in TASKS]
    assert sum(a.messages != b.messages for a, b in zip(TASKS, other)) >= 55


def test_no_suite_asks_one_question_twice() -> None:
    tasks = generate(SUITES, 40, seed=0)
    assert len({prompt_key(t.messages) for t in tasks}) == len(tasks)


def test_unknown_suite_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="'maths'.*math, json, tools, code, vision"):
        build_suites(["math", "maths"])


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.id)
def test_reference_passes_and_a_near_miss_fails(task: Task) -> None:
    check = SUITES[task.suite].check
    verdict = check(task, task.reference)
    assert verdict.correct, verdict
    assert verdict.answer
    miss = check(task, wrong_reply(task))
    assert not miss.correct and miss.detail


def test_math_reads_the_answer_line() -> None:
    task = next(t for t in TASKS if t.suite == "math")
    check = SUITES["math"].check
    assert check(task, Reply(content=f"Let me see: 2 + 2 = 4.\n**Answer:** {task.expected}")).correct
    assert check(task, Reply(content=f"Answer: {task.expected}", reasoning="Answer: 0")).correct
    assert not check(task, Reply(content="", reasoning=f"Answer: {task.expected}")).correct  # only the answer counts
    assert check(task, Reply(content="I cannot tell.")).detail == "no number in the answer"


def test_json_is_checked_against_the_schema_before_the_values() -> None:
    task = next(t for t in TASKS if t.suite == "json")
    check = SUITES["json"].check
    extra = {**task.expected, "note": "extra"}
    assert "does not fit the schema" in check(task, Reply(content=json.dumps(extra))).detail
    missing = dict(list(task.expected.items())[1:])
    assert "does not fit the schema" in check(task, Reply(content=json.dumps(missing))).detail
    shouted = {k: v.upper() if isinstance(v, str) else v for k, v in task.expected.items()}
    assert check(task, Reply(content=f"Here it is:\n```json\n{json.dumps(shouted)}\n```")).correct
    assert check(task, Reply(content="no JSON")).detail == "no JSON object in the answer"


def test_tools_are_checked_on_the_call_not_on_text() -> None:
    task = next(t for t in TASKS if t.suite == "tools")
    check = SUITES["tools"].check
    call = task.reference.tool_calls[0]
    assert not check(task, Reply(content=f"{call.name}({call.arguments})")).correct
    assert "expected" in check(task, Reply(tool_calls=(ToolCall("other", call.arguments),))).detail
    assert check(task, Reply(tool_calls=(ToolCall(call.name, "{not json"),))).detail == "arguments are not JSON"
    extra = json.dumps({**json.loads(call.arguments), "extra": 1})
    assert "argument names" in check(task, Reply(tool_calls=(ToolCall(call.name, extra),))).detail


def test_code_without_a_block_is_not_run() -> None:
    task = next(t for t in TASKS if t.suite == "code")
    assert SUITES["code"].check(task, Reply(content="I would loop over it.")).detail == "no code block in the answer"


def test_vision_images_are_pngs_and_tasks_alternate_count_and_digit() -> None:
    vision = [t for t in TASKS if t.suite == "vision"]
    for task in vision:
        text, image = task.messages[0]["content"]
        assert image["image_url"]["url"].startswith("data:image/png;base64,iVBORw0KGgo")
    assert all("How many" in t.messages[0]["content"][0]["text"] for t in vision[::2])
    assert all("digit" in t.messages[0]["content"][0]["text"] and 0 <= t.expected <= 9 for t in vision[1::2])
