"""``unimodel serve --workers N``: N uvicorn worker processes sharing one listening port.

uvicorn runs the workers (``uvicorn.run(..., workers=N, factory=True)``): its supervisor binds the port once,
spawns the processes, and restarts one that dies. Each worker builds its own app from the parent's settings
(handed over in a private temporary file, so secrets stay out of the environment) with :func:`worker_app`.

What each worker holds on its own, per process:

* the engine's upstream connection pool (and each key's share of it), the resilience stage's breakers and retry
  state;
* its client connections and their bounds (``server/connections.py``): ``--max-connections`` is per worker;
* the request log writer (every worker appends to the same database: SQLite serialises the writers; prefer
  PostgreSQL, ``--log-db``, for many workers) and the dashboard's window and alerts;
* the metrics registry: ``GET /metrics`` reports the worker that answered the scrape. Counters from one
  worker only; to see the whole server scrape replicas on their own ports instead (one ``unimodel serve`` each)
  or read the request log. prometheus_client's multiprocess mode is not used: it does not carry the gauges the
  metrics collect at scrape time.

Each worker watches the key files and reads its keys again on its own (``server/reload.py``); a SIGHUP to the
main process is uvicorn's, which replaces the workers one by one, each reading the files' keys as it starts.

What must be shared is refused in memory: rate limits, quotas and concurrency caps, and idempotency keys, kept
in one process's memory, would let each worker admit its own share. With N > 1 they need ``--redis``.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from pathlib import Path

from fastapi import FastAPI

from unimodel.compose import check_workers
from unimodel.config import Settings

SETTINGS_FILE_ENV = "_UNIMODEL_WORKER_SETTINGS_FILE"  # not UNIMODEL_*: that prefix is read as settings

log = logging.getLogger("unimodel")


def run_workers(settings: Settings) -> None:
    """Serve with ``settings.workers`` processes on one port; returns when uvicorn's supervisor stops."""
    import uvicorn

    from unimodel.server.connections import uvicorn_options
    from unimodel.server.run import fitted_connection_bounds

    check_workers(settings)
    fd, path = tempfile.mkstemp(prefix="unimodel-workers-", suffix=".settings")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(settings, f)
        os.environ[SETTINGS_FILE_ENV] = path
        log.info("unimodel serving on http://%s:%d/v1 with %d workers", settings.host, settings.port,
                 settings.workers)
        uvicorn.run(
            "unimodel.server.workers:worker_app",
            factory=True,
            workers=settings.workers,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            timeout_graceful_shutdown=int(round(settings.shutdown_grace_s)),
            lifespan="on",
            access_log=False,
            **uvicorn_options(fitted_connection_bounds(settings)),  # each worker: its own connections, its own cap
        )
    finally:
        os.environ.pop(SETTINGS_FILE_ENV, None)
        Path(path).unlink(missing_ok=True)


def worker_app() -> FastAPI:
    """The app factory each worker process calls: the parent's settings, this process's engine."""
    from unimodel.server.app import create_app

    path = os.environ.get(SETTINGS_FILE_ENV)
    if not path:
        raise RuntimeError(f"{SETTINGS_FILE_ENV} is not set: worker_app runs under `unimodel serve --workers`")
    with open(path, "rb") as f:  # written by run_workers in this user's private temporary file
        settings: Settings = pickle.load(f)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("unimodel").setLevel(settings.log_level.upper())

    # a start failure is logged and kept for /ready (503) by the app; exiting would only make uvicorn respawn us
    app = create_app(settings)
    app.state.drain.arm(settings.shutdown_drain_s)  # each worker drains on the SIGTERM uvicorn passes on
    if app.state.key_reload is not None:
        app.state.key_reload.arm()  # a SIGHUP sent to this worker reads its keys again (server/reload.py)
    return app
