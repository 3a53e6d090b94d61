"""The SSE line splitter: the same lines wherever the stream is cut, the three line endings, and a bound."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unimodel.engines.sse_lines import SseLineSplitter
from unimodel.errors import UpstreamError

STREAM = "data: {\"a\": \"x\u2028y\u0085z\"}\n\n: keep-alive\nevent: message\ndata: é🎉\n\ndata: [DONE]\n\n".encode()
LINES = [b'data: {"a": "x\xe2\x80\xa8y\xc2\x85z"}', b"", b": keep-alive", b"event: message",
         "data: é🎉".encode(), b"", b"data: [DONE]", b""]


def _split(chunks: list[bytes], max_line_bytes: int = 1 << 20) -> list[bytes]:
    splitter = SseLineSplitter(max_line_bytes)
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(splitter.feed(chunk))
    return out + splitter.close()


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_every_cut_in_two_gives_the_same_lines(ending: bytes) -> None:
    stream = STREAM.replace(b"\n", ending)
    for cut in range(len(stream) + 1):
        assert _split([stream[:cut], stream[cut:]]) == LINES, cut


@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=12),
       endings=st.sampled_from([b"\n", b"\r\n", b"\r"]))
def test_any_cuts_give_the_same_lines(cuts: list[int], endings: bytes) -> None:
    stream = STREAM.replace(b"\n", endings)
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    assert _split([stream[a:b] for a, b in zip(points, points[1:])]) == LINES


def test_mixed_endings_and_a_last_line_without_one() -> None:
    assert _split([b"a\r\nb\rc\nd\r", b"\r\ne"]) == [b"a", b"b", b"c", b"d", b"", b"e"]
    assert _split([b"one\r"]) == [b"one"]
    assert _split([b"", b"x", b"", b"y\n"]) == [b"xy"]


def test_only_the_three_endings_end_a_line() -> None:
    assert _split([b"a\x0bb\x0cc\x1cd\n"]) == [b"a\x0bb\x0cc\x1cd"]


def test_a_line_longer_than_the_bound_without_an_end_is_an_error() -> None:
    splitter = SseLineSplitter(max_line_bytes=10)
    assert splitter.feed(b"0123456789\n") == [b"0123456789"]  # at the bound: fine
    assert splitter.feed(b"01234") == []
    with pytest.raises(UpstreamError, match="over 10 bytes"):
        splitter.feed(b"567890")
    with pytest.raises(UpstreamError):
        SseLineSplitter(max_line_bytes=10).feed(b"\n" + b"x" * 11)
