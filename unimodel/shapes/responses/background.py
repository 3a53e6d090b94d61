"""Background responses (``background: true``): the runs this process owns, bounded, cancellable, ended on shutdown.

A background request is admitted through the whole pipeline exactly as a foreground one (auth, limits, quotas,
the engine's first event: a refusal is the client's synchronous answer), then answered at once with the Response
``in_progress`` while a task of the server, not of the connection, runs the generation to its end and stores the
final Response (``ResponseStore.update(..., expect=RUNNING)``, so a cancel and the end cannot overwrite each
other). :class:`BackgroundRuns` keeps those tasks:

* **bounded**: at most ``max_in_flight`` at once in this process (``--responses-max-background``); a slot is taken
  synchronously (:meth:`reserve`) before anything is stored, so the bound holds under any interleaving, and one
  more is a 429 (the shape also refuses early, before the engine is asked, when it is already full);
* **cancellable**: ``POST /v1/responses/{id}/cancel`` marks the stored response ``cancelled`` and then cancels the
  task here (:meth:`cancel`): the request ends as one whose client left (engine stream closed, stages released,
  a 499 in the request log) and its answer is dropped. A response running in another process (another worker or
  replica) is marked cancelled all the same; that process's run then finds it so and drops its answer when it
  ends, but its engine work is not cut short;
* **ended on shutdown** (:meth:`aclose`, first thing in the app's shutdown, while the engines, the stages and the
  store still work): every run is cancelled and stored ``failed`` with ``server_error`` ("the server shut down
  …"), so a client polling it learns to ask again rather than wait forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Optional

from unimodel.errors import InvalidRequestError, RateLimitError, ServiceUnavailableError

log = logging.getLogger("unimodel.responses")

DEFAULT_MAX_IN_FLIGHT = 64
#: how long shutdown waits for the cancelled runs to store their end
CLOSE_WAIT_S = 10.0


class Slot:
    """A place among the runs, taken before the run starts; given back by :meth:`release` if it never does."""

    __slots__ = ("_runs", "_held")

    def __init__(self, runs: "BackgroundRuns") -> None:
        self._runs = runs
        self._held = True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._runs._reserved -= 1

    def hand_over(self) -> None:
        """The run started: the slot is its task's now (freed when the task ends)."""
        self.release()


class BackgroundRuns:
    """The background runs of this process, by (owner, response id)."""

    def __init__(self, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT) -> None:
        if max_in_flight < 0:
            raise ValueError("the number of background responses is 0 or more")
        self.max_in_flight = max_in_flight
        self.closing = False  # set by aclose: a run cancelled now was stopped by the shutdown, not by a client
        self._tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._reserved = 0

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def in_flight(self) -> int:
        """Runs going on, and slots taken for runs about to start."""
        return len(self._tasks) + self._reserved

    def check(self) -> None:
        """Refuse a background request now if it could not run (full: 429; shutting down: 503)."""
        if self.closing:
            raise ServiceUnavailableError("The server is shutting down: send the request again, to another "
                                          "replica or later.", retry_after=5)
        if self.max_in_flight == 0:
            raise InvalidRequestError("This server runs no background responses (--responses-max-background 0): "
                                      "send the request without 'background'.", param="background")
        if self.in_flight >= self.max_in_flight:
            raise RateLimitError(f"This server is already running {self.max_in_flight} background responses, as "
                                 "many as it runs at once: try again shortly, or send the request without "
                                 "'background'.", retry_after=1)

    def reserve(self) -> Slot:
        """A slot for one run (synchronous: no other request can take it meanwhile), or the refusal of
        :meth:`check`."""
        self.check()
        self._reserved += 1
        return Slot(self)

    def start(self, slot: Slot, owner: str, response_id: str, run: Coroutine[Any, Any, None]) -> None:
        """Run ``run`` as a task of the server's in ``slot``."""
        key = (owner, response_id)
        task = asyncio.get_running_loop().create_task(run, name=f"responses-background-{response_id}")
        slot.hand_over()
        self._tasks[key] = task
        task.add_done_callback(lambda done: self._ended(key, done))

    def _ended(self, key: tuple[str, str], task: "asyncio.Task[None]") -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled() and task.exception() is not None:  # the run logs its own failures: a bug
            log.error("background response %s: its run failed", key[1], exc_info=task.exception())

    def running(self, owner: str, response_id: str) -> Optional["asyncio.Task[None]"]:
        return self._tasks.get((owner, response_id))

    async def cancel(self, owner: str, response_id: str, wait_s: float = CLOSE_WAIT_S) -> bool:
        """Cancel the owner's run of that id, if this process runs it, and wait (up to ``wait_s``) for it to
        end; ``False`` when there is none here."""
        task = self._tasks.get((owner, response_id))
        if task is None:
            return False
        task.cancel()
        await asyncio.wait([task], timeout=wait_s)
        return True

    async def aclose(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Cancel every run (each stores its end: ``failed``, the server shut down) and wait for them."""
        self.closing = True
        tasks = list(self._tasks.values())
        if not tasks:
            return
        log.warning("shutting down: %d background responses stopped (stored as failed)", len(tasks))
        for task in tasks:
            task.cancel()
        _, pending = await asyncio.wait(tasks, timeout=wait_s)
        if pending:
            log.error("%d background responses did not end within %.0fs of the shutdown", len(pending), wait_s)
