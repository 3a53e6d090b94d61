"""Draining on SIGTERM: ``/ready`` says 503 first, while the server still accepts and serves, then uvicorn stops.

A load balancer takes a replica out of rotation when its readiness check fails, which takes it a few checks.
uvicorn, told to stop, closes its listening socket at once and lets the requests in flight finish: a load
balancer that has not noticed yet sends its next requests to a closed port. So the first SIGTERM only marks
the server as draining (``/ready`` answers 503 ``not ready``, requests are served as before) for
``--shutdown-drain-s`` seconds, and then hands the signal to uvicorn's own handler (stop accepting, let the
requests in flight finish within ``--shutdown-grace-s``, run the lifespan's shutdown). A second SIGTERM, or a
SIGINT (Ctrl-C), stops at once.

How it hooks in: uvicorn installs its handlers with ``signal.signal`` when it starts serving, before it runs the
app's lifespan; the lifespan's startup then calls :meth:`Drain.install`, which keeps uvicorn's SIGTERM handler
and puts its own in front of it through the event loop (``loop.add_signal_handler``: the callback runs on the
loop, not inside the interrupted code). The same holds for each ``--workers`` process: uvicorn's supervisor
passes a SIGTERM on to every worker, and each drains on its own. Written by hand: uvicorn has no drain phase
(its ``timeout_graceful_shutdown`` starts after the socket is closed).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import Any, Optional

log = logging.getLogger("unimodel.server")


class Drain:
    """Whether this server is draining. ``drain_s`` is ``None`` until the process's runner arms it (the CLI's
    ``serve``; an app served by a test's own uvicorn leaves the process's signals alone)."""

    def __init__(self) -> None:
        self.draining = False
        self.drain_s: Optional[float] = None

    def arm(self, drain_s: float) -> None:
        """Drain for ``drain_s`` seconds on SIGTERM once the app has started (see :meth:`install`)."""
        if drain_s < 0:
            raise ValueError("the drain time is a number of seconds ≥ 0")
        self.drain_s = drain_s

    def install(self) -> bool:
        """Put the drain in front of the server's SIGTERM handler; call on the server's running loop, after the
        server installed its handlers (the app's lifespan startup). False where it cannot: not armed, not the
        main thread, no handler of the server's to hand the signal to, or a loop without signal handlers."""
        drain_s = self.drain_s
        if drain_s is None or threading.current_thread() is not threading.main_thread():
            return False
        server_handler = signal.getsignal(signal.SIGTERM)
        if not callable(server_handler):
            return False
        loop = asyncio.get_running_loop()
        def stop() -> Any:
            return server_handler(signal.SIGTERM, None)

        def on_sigterm() -> None:
            if self.draining:  # a second SIGTERM: no more waiting
                stop()
                return
            self.draining = True
            log.warning("SIGTERM: /ready says 503 for %g s while requests are still served; then the server "
                        "stops accepting and lets the requests in flight finish", drain_s)
            loop.call_later(drain_s, stop)

        try:
            loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        except (NotImplementedError, RuntimeError, ValueError):  # no signal handlers on this loop or platform
            return False
        return True
