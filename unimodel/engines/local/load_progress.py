"""What the local engine is doing while its model loads: a few INFO lines in the log, and ``/ready``'s answer.

Loading a real checkpoint takes minutes (a hub download, tens of safetensors shards, a conversion from
Mistral's native format, the move to the GPU, a first forward pass), and ``/ready`` says 503 all along: without
this the log says nothing between "Uvicorn running" and "local engine: … ready", and an operator cannot tell a
slow load from a hung one. The loader thread calls :meth:`LoadProgress.phase` when a step starts and
:meth:`LoadProgress.step` as it counts units (shards); the event loop reads :meth:`LoadProgress.snapshot`
(``/ready``). The log gets one line per phase, shard counts at most every :data:`LOG_EVERY_S` seconds, and one
line at the end with every phase's time: a few lines per load whatever the size of the checkpoint, never one
per tensor or per shard.

Hand-written: transformers' own progress is a tqdm bar on stderr (shards only, no phases, unreadable in a
service's log), and nothing else reports these phases. Shared between two threads by assigning immutable
values only (the GIL makes each assignment atomic), so no lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Optional

from unimodel.engines.base import StartProgress

log = logging.getLogger("unimodel.local")

LOG_EVERY_S = 10.0  # the shortest gap between two "shard n of m" lines


def describe_size(n_bytes: int) -> str:
    """``1.2 GB``, ``3.4 MB``, ``512 kB`` (decimal units, as the hub shows sizes)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes} B"


class LoadProgress:
    """The phases of one model load, timed; see the module docstring."""

    def __init__(self, model: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.model = model
        self._clock = clock
        self.started = clock()
        self._phase = "starting"
        self._phase_started = self.started
        self._counts: tuple[Optional[int], Optional[int]] = (None, None)
        self._logged_at = self.started
        self.times: dict[str, float] = {}  # phase → seconds, for the closing line
        self.finished = False

    def phase(self, name: str, detail: str = "", total: Optional[int] = None) -> None:
        """Start the phase ``name`` (closing the one before); ``total`` units to count (:meth:`step`)."""
        self._close_phase()
        now = self._clock()
        self._phase, self._phase_started, self._logged_at = name, now, now
        self._counts = (0 if total else None, total or None)
        log.info("loading %s: %s%s (%.1f s so far)", self.model, name, f": {detail}" if detail else "",
                 now - self.started)

    def step(self, done: int, total: int) -> None:
        """``done`` of the phase's ``total`` units are done; logged at most every :data:`LOG_EVERY_S` seconds."""
        self._counts = (done, total)
        now = self._clock()
        if done < total and now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.info("loading %s: %s %d of %d (%.0f %%, %.1f s so far)", self.model, self._phase, done, total,
                     100.0 * done / total, now - self.started)

    def finish(self) -> float:
        """Close the last phase and log the total with every phase's time; the seconds the load took."""
        self._close_phase()
        self.finished = True
        took = self._clock() - self.started
        phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.times.items())
        log.info("loaded %s in %.1f s (%s)", self.model, took, phases)
        return took

    def snapshot(self, summary: str = "the model is loading") -> StartProgress:
        """What ``/ready`` shows now."""
        done, total = self._counts
        return StartProgress(summary, self._phase, self._clock() - self.started, done, total)

    @property
    def current(self) -> str:
        return self._phase

    def _close_phase(self) -> None:
        if self._phase != "starting":
            self.times[self._phase] = self.times.get(self._phase, 0.0) + self._clock() - self._phase_started
