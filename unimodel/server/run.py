"""Run the app under uvicorn with graceful shutdown (SIGTERM: stop accepting, let in-flight finish)."""

from __future__ import annotations

import logging

import uvicorn

from unimodel.compose import compose
from unimodel.config import Settings
from unimodel.server.app import serve_composition

log = logging.getLogger("unimodel")


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
    )
    server = uvicorn.Server(config)
    server.run()
    if failure:
        raise StartFailed(str(failure[0])) from failure[0]
