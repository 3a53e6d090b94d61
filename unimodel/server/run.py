"""Run the app under uvicorn with graceful shutdown (SIGTERM: stop accepting, let in-flight finish)."""

from __future__ import annotations

import logging

import uvicorn

from unimodel.config import Settings
from unimodel.engines.factory import build_engine
from unimodel.server.app import create_app

log = logging.getLogger("unimodel")


def run_server(settings: Settings) -> None:
    engine = build_engine(settings)
    app = create_app(settings, engine)
    log.info("unimodel serving on http://%s:%d/v1 (engine: %s)", settings.host, settings.port, engine.kind)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        lifespan="on",
    )
    uvicorn.Server(config).run()
