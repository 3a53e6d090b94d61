"""Errors grouped by kind with one message each, and what an error answer's body gives."""

from __future__ import annotations

import json

import pytest

from unimodel.bench.client import RequestRecord, error_detail
from unimodel.bench.failures import one_line, summarise_errors


def failed(error: str, code: str | None, message: str, status: int | None = None) -> RequestRecord:
    return RequestRecord(index=0, kind="chat", effort=None, start=0.0, end=0.1, error=error, error_code=code,
                         error_message=message, status=status)


@pytest.mark.parametrize("body, expected", [
    ({"error": {"message": "no such model", "type": "invalid_request_error", "code": "model_not_found"}},
     ("no such model", "model_not_found")),
    ({"error": {"message": "The model `x` does not exist.", "type": "NotFoundError", "code": 404}},  # vLLM
     ("The model `x` does not exist.", "NotFoundError")),
    ({"error": "overloaded"}, ("overloaded", None)),
    ({"detail": "Not Found"}, ("Not Found", None)),  # FastAPI
    ({"error": {"message": "m", "code": "bad code\n\x1b[31m"}}, ("m", "bad_code__[31m")),
])
def test_the_message_and_code_of_an_error_body(body: object, expected: tuple[str, str | None]) -> None:
    assert error_detail(json.dumps(body).encode()) == expected


def test_a_page_that_is_not_json_is_its_text_bounded() -> None:
    message, code = error_detail(b"<html>" + b"x" * 5000)
    assert code is None and message.startswith("<html>") and len(message) == 300


def test_errors_are_grouped_by_status_and_code_most_frequent_first() -> None:
    records = [failed("http_400", "invalid_value", "max_tokens (2048) is above the cap", 400),
               failed("connect_error", "ConnectError", "All connection attempts failed"),
               failed("http_400", "invalid_value", "another message", 400),
               failed("http_400", "model_not_found", "no such model", 400),
               RequestRecord(index=1, kind="chat", effort=None, start=0.0, end=1.0)]  # completed: not an error
    groups = summarise_errors(records)
    assert [(g.kind, g.status, g.count, g.sample) for g in groups] == [
        ("http_400 invalid_value", 400, 2, "max_tokens (2048) is above the cap"),  # the first message
        ("connect_error ConnectError", None, 1, "All connection attempts failed"),
        ("http_400 model_not_found", 400, 1, "no such model")]


def test_a_sample_is_one_printable_line() -> None:
    [group] = summarise_errors([failed("stream_error", None, "line one\nline\x1b[2J two\t" + "z" * 400)])
    assert group.kind == "stream_error" and "\n" not in group.sample and "\x1b" not in group.sample
    assert group.sample.startswith("line one line [2J two z") and len(group.sample) == 300
    assert one_line("a\r\nb", 10) == "a b"
