"""Run the app under uvicorn with graceful shutdown (SIGTERM: ``/ready`` 503 for ``--shutdown-drain-s`` while
still serving (``server/drain.py``), then stop accepting and let in-flight requests finish)."""

from __future__ import annotations

import logging

import uvicorn

from unimodel.compose import compose
from unimodel.config import Settings
from unimodel.server.app import serve_composition
from unimodel.server.connections import ConnectionBounds, fit_to_fd_limit, uvicorn_options

log = logging.getLogger("unimodel")


def connection_bounds(settings: Settings) -> ConnectionBounds:
    """What one client connection may hold (``server/connections.py``), from the settings."""
    return ConnectionBounds(
        max_connections=settings.max_connections, max_header_bytes=settings.max_header_bytes,
        header_timeout_s=settings.header_timeout_s, keep_alive_timeout_s=settings.keep_alive_timeout_s,
        write_timeout_s=settings.stream_write_timeout_s)


def fitted_connection_bounds(settings: Settings) -> ConnectionBounds:
    """:func:`connection_bounds`, with the open-file limit raised to fit them (or them lowered to fit it): room
    for every upstream pool (the primary's and each extra upstream's) and a few dozen other files besides."""
    upstreams = 1 + len(settings.fallback_upstreams) + len(settings.upstreams) + (settings.canary_upstream is not None)
    return fit_to_fd_limit(connection_bounds(settings), reserve=upstreams * settings.upstream_max_connections + 64)


class StartFailed(Exception):
    """The engine could not start (a model that does not load, a vLLM that cannot launch)."""


def run_server(settings: Settings) -> None:
    # --log-level governs our own loggers (the access log is INFO) as well as uvicorn's
    logging.getLogger("unimodel").setLevel(settings.log_level.upper())
    parts = compose(settings)
    failure: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop_on_failure(exc: BaseException) -> None:
        failure.append(exc)
        if server is not None:
            server.should_exit = True

    app = serve_composition(parts, on_start_failure=stop_on_failure)
    app.state.drain.arm(settings.shutdown_drain_s)  # SIGTERM: /ready 503 first, then uvicorn's shutdown
    if app.state.key_reload is not None:
        app.state.key_reload.arm()  # SIGHUP: read the keys again (server/reload.py)
    log.info("unimodel serving on http://%s:%d/v1 (engine: %s)", settings.host, settings.port,
             parts.engines.primary.kind)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(round(settings.shutdown_grace_s)),
        lifespan="on",
        access_log=False,  # unimodel.access writes one line per request, without the client's IP address
        **uvicorn_options(fitted_connection_bounds(settings)),
    )
    server = uvicorn.Server(config)
    server.run()
    if failure:
        raise StartFailed(str(failure[0])) from failure[0]
