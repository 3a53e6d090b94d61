"""Prompt retention: empty the stored prompts and answers once they are older than ``--prompt-retention``.

The rows themselves stay (counts, times, status); only their ``prompt`` and ``answer`` text goes. The sweeper
is an asyncio task whose database work runs in a thread: it runs once the writer has migrated the database (at
start-up when the database is up), then every ``interval_s``; a partial index on the rows that still hold text
keeps each pass small. A pass that fails (the database is down) is logged and tried again at the next interval.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import datetime, timedelta, timezone
from typing import Optional

from unimodel.telemetry.store import LogStore

log = logging.getLogger("unimodel.request_log")


class PromptSweeper:
    def __init__(self, store: LogStore, retention_days: float, interval_s: float = 3600.0) -> None:
        self.store = store
        self.retention = timedelta(days=retention_days)
        self.interval_s = interval_s

    def sweep_once(self, now: Optional[datetime] = None) -> int:
        """Empty the prompts of rows older than the retention (blocking); the number of rows emptied."""
        cutoff = (now or datetime.now(timezone.utc)) - self.retention
        cleared = self.store.clear_prompts(cutoff)
        if cleared:
            log.info("request log: emptied the prompt and answer of %d rows older than %s", cleared,
                     cutoff.isoformat(timespec="seconds"))
        return cleared

    async def run(self, schema_ready: Optional[threading.Event] = None) -> None:
        """Sweep now and every ``interval_s``; first wait for ``schema_ready`` (the writer's migrations)."""
        while schema_ready is not None and not schema_ready.is_set():
            await asyncio.sleep(0.5)
        while True:
            try:
                await asyncio.to_thread(self.sweep_once)
            except Exception as exc:
                log.warning("request log: the prompt sweep failed (%s); it runs again in %.0f s",
                            type(exc).__name__, self.interval_s)
            await asyncio.sleep(self.interval_s)
