"""From generated token ids to neutral events: detokenize, cut at stop strings, parse on ids, count usage.

Hand-written glue between the tokenizer (:mod:`.detok`), the model family's parser (``formats/``) and the
OpenAI usage numbers. Decisions:

* Special tokens reach the parser by id with no text (so a marker typed by a user stays text); stop and
  EOS tokens end the output and are never fed.
* Stop strings are matched on the generated text (reasoning and answer alike, as vLLM does), within runs of
  ordinary tokens: text that could still be the start of a stop string is held back, and a special token
  flushes what was held. The text before the stop string is kept, the stop string and everything after is
  dropped, and the finish reason is ``stop``.
* ``completion_tokens`` counts every token the model produced for the answer, including the final EOS/stop
  token and the token that completed a stop string; tokens generated after that are not counted.
* ``reasoning_tokens`` counts the thinking tokens between the family's opening and closing markers, the
  markers not included: the same count the thinking budget is enforced on, and the upstream engine reports.
"""

from __future__ import annotations

from collections.abc import Collection

from unimodel.formats.detok import Detokenizer
from unimodel.formats.base import OutputParser
from unimodel.protocol.events import Event, Finish, FinishReason, Usage


class StopStringMatcher:
    """Finds the first stop string in streamed text, holding back a possible partial match."""

    def __init__(self, stops: Collection[str]) -> None:
        self.stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._buf = ""
        self.stopped = False

    def push(self, text: str) -> str:
        """Text safe to emit now; after a match, ``stopped`` is True and the rest is dropped."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        self._buf += text
        cut = min((i for i in (self._buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self._buf, self.stopped = self._buf[:cut], "", True
            return out
        keep = self._hold
        # hold back only the tail that is a prefix of some stop string
        while keep > 0 and not any(s.startswith(self._buf[-keep:]) for s in self.stops):
            keep -= 1
        if keep >= len(self._buf):
            return ""
        out = self._buf[: len(self._buf) - keep]
        self._buf = self._buf[len(self._buf) - keep:]
        return out

    def flush(self) -> str:
        out, self._buf = ("" if self.stopped else self._buf), ""
        return out


class OutputAssembler:
    """Feeds one generation's tokens through detokenizer, stop strings and parser; tracks usage."""

    def __init__(
        self,
        parser: OutputParser,
        detok: Detokenizer,
        *,
        prompt_tokens: int,
        marker_ids: Collection[int],
        end_ids: Collection[int],
        stop_strings: Collection[str] = (),
    ) -> None:
        self.parser = parser
        self.detok = detok
        self.prompt_tokens = prompt_tokens
        self._markers = frozenset(marker_ids)
        self._end = frozenset(end_ids)
        self._stops = StopStringMatcher(stop_strings)
        self.completion_tokens = 0
        self.reasoning_tokens = 0
        self._last_token = 0
        #: the token :meth:`feed` took last belongs to the thinking (inside it, or one of its markers)
        self.thinking_token = False

    @property
    def stopped(self) -> bool:
        """A stop string was found: the caller should stop generating and call :meth:`finish`."""
        return self._stops.stopped

    def feed(self, token_id: int) -> list[Event]:
        if self._stops.stopped:
            return []
        self.completion_tokens += 1
        was_reasoning = self.parser.in_reasoning
        events: list[Event] = []
        if token_id in self._end:
            pass
        elif token_id in self._markers:
            events += self._text(self.detok.flush(), token_id)
            events += self._text(self._stops.flush(), token_id)
            events += self.parser.feed_token(token_id, "")
        else:
            events += self._text(self._stops.push(self.detok.push(token_id)), token_id)
        if was_reasoning and self.parser.in_reasoning and token_id not in self._markers:
            self.reasoning_tokens += 1
        self.thinking_token = was_reasoning or self.parser.in_reasoning
        return events

    def _text(self, text: str, token_id: int) -> list[Event]:
        # the id of a text token only matters to the parser when it is a marker, which text never is here
        return self.parser.feed_token(-1, text) if text else []

    def finish(self, reason: FinishReason) -> list[Event]:
        """Flush, then ``Usage`` and ``Finish`` (the parser may turn "stop" into "tool_calls")."""
        events: list[Event] = []
        if not self._stops.stopped:
            events += self._text(self._stops.push(self.detok.flush()), 0)
            events += self._text(self._stops.flush(), 0)
        if self._stops.stopped:
            reason = "stop"
        tail = self.parser.finish(reason)
        finish = [e for e in tail if isinstance(e, Finish)]
        events += [e for e in tail if not isinstance(e, Finish)]
        # no prefix cache here: no prompt token is ever read from a cache
        events.append(Usage(self.prompt_tokens, self.completion_tokens, self.reasoning_tokens, cached_tokens=0))
        events += finish or [Finish(reason)]
        return events
