"""API keys changed without a restart: the server reads its keys again when their files change, and on SIGHUP.

``unimodel keys revoke`` edits the config file; an operator adds a key made by ``unimodel keys create`` to it, or
a line to ``--api-key-file``. A revoked key has to stop working now, not at the next restart, and a restart
drops every stream in flight. So while it serves, the server watches the config file and ``--api-key-file``
(their inode, size and modification time, read every :data:`POLL_S` seconds: a ``stat`` each, no dependency,
and it sees what inotify can miss: a file replaced by rename, as ``keys revoke`` and editors do, a Kubernetes
ConfigMap's symlink swap, a network file system), and reloads on ``SIGHUP`` too. A changed file must hold still
for :data:`SETTLE_S` before it is read, so an editor's write in several steps is read once, whole.

A reload reads every setting again, exactly as the start did (:meth:`~unimodel.config.Settings.reloaded`, through
``compose.key_source``): a file that does not parse or does not hold (a key naming a route that does not exist,
two keys with one name, an unreadable ``--api-key-file``) is one error line, and the keys in use stay. So does a
file that would leave the server with no key at all (it would be open to anyone), or give keys to a server that
started without any (its other defences were set up for a server without keys): both need a restart. Otherwise
the key ring swaps its whole set of keys in one assignment on the event loop
(:meth:`~unimodel.gateway.keys.KeyRing.replace`): a request already admitted keeps its caller, the next one is
checked against the new keys, and a revoked key is refused at once, though its answer was cached. One line
says what changed, by name (never a key or a hash). Only the keys are applied; another setting that changed in
the file is named in a warning and waits for a restart.

Each ``--workers`` process watches and reloads on its own. A ``SIGHUP`` sent to the main process is uvicorn's:
it replaces the workers one by one, and each reads the files' keys when it starts (its settings are the ones the
main process read at start-up), so either way every worker ends up with the file's keys.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

from unimodel.compose import KeySource
from unimodel.errors import ConfigError
from unimodel.gateway.keys import KeyRing
from unimodel.printable import mask_urls_in, printable

log = logging.getLogger("unimodel.server")

POLL_S = 2.0  # how often the files are looked at
SETTLE_S = 0.25  # a changed file must not change again for this long before it is read
MAX_SETTLE_S = 5.0  # a file that keeps changing is read after this long anyway

Signature = tuple[Optional[tuple[int, int, int, int]], ...]


def signature(files: Sequence[Path]) -> Signature:
    """What says a file changed: its device, inode, size and modification time (``None`` for a missing one);
    through a symlink, the file it names."""
    seen: list[Optional[tuple[int, int, int, int]]] = []
    for path in files:
        try:
            st = os.stat(path)
        except OSError:
            seen.append(None)
            continue
        seen.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(seen)


class KeyReload:
    """Reads the keys again from ``source`` and swaps them into ``ring`` (see the module docstring); ``on_names``
    is told every key's name after each reload (the metrics' label bounds)."""

    def __init__(self, ring: KeyRing, source: KeySource, *, poll_s: float = POLL_S,
                 on_names: Optional[Callable[[list[str]], None]] = None) -> None:
        self.ring = ring
        self.source = source
        self.poll_s = poll_s
        self.on_names = on_names
        self.reloads = 0  # reloads that applied (for tests and /ready-style introspection)
        self.failures = 0  # reloads refused: the old keys stayed
        self._signals = False
        self._seen: Signature = ()
        self._lock = asyncio.Lock()
        self._watcher: Optional[asyncio.Task[None]] = None
        self._tasks: set[asyncio.Task[bool]] = set()
        self._sighup = False

    @property
    def where(self) -> str:
        return ", ".join(str(p) for p in self.source.files)

    def arm(self) -> None:
        """Reload on SIGHUP too, once started (the CLI's runner arms it; a test's own server leaves the process's
        signals alone)."""
        self._signals = True

    async def start(self) -> None:
        """Read the keys now (a worker that uvicorn replaced or restarted begins with the settings the main
        process read at start-up, the file may have changed since), then watch the files and SIGHUP."""
        await self.reload("start", quiet=True)
        self._watcher = asyncio.create_task(self._watch(), name="key-reload")
        if self._signals and threading.current_thread() is threading.main_thread():
            try:
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._on_sighup)
                self._sighup = True
            except (NotImplementedError, RuntimeError, ValueError, AttributeError):  # no SIGHUP on this platform
                pass

    async def aclose(self) -> None:
        if self._sighup:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self._sighup = False
        tasks = [t for t in (self._watcher, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watcher = None

    def _on_sighup(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload("SIGHUP"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.poll_s)
            try:
                now = await asyncio.to_thread(signature, self.source.files)
                if now == self._seen:
                    continue
                settle_until = loop.time() + MAX_SETTLE_S
                while loop.time() < settle_until:  # until it holds still: an editor may write in several steps
                    await asyncio.sleep(SETTLE_S)
                    again = await asyncio.to_thread(signature, self.source.files)
                    if again == now:
                        break
                    now = again
                await self.reload("the file changed")
            except asyncio.CancelledError:
                raise
            except Exception:  # never let the watch die: the next change must still be seen
                log.exception("watching the key files %s failed", self.where)

    async def reload(self, why: str, *, quiet: bool = False) -> bool:
        """Read the keys again and serve with them; ``False`` (one error line, the keys unchanged) when the
        files do not hold. ``quiet``: no line when nothing changed."""
        async with self._lock:
            self._seen = await asyncio.to_thread(signature, self.source.files)  # before reading: a later change
            try:                                                                 # is seen by the next look
                update = await asyncio.to_thread(self.source.read)
            except ConfigError as exc:
                return self._refused(why, printable(mask_urls_in(str(exc))))
            except Exception as exc:  # a bug, not the operator's file: its traceback, and the keys stay
                log.exception("keys not reloaded from %s (%s); the keys in use stay as they were", self.where, why)
                self.failures += 1
                return False
            has_keys = bool(update.plain or update.named)
            if self.ring.enabled and not has_keys:
                return self._refused(why, "it has no API key at all, which would open the server to anyone; to "
                                          "serve without keys, restart it")
            if has_keys and not self.ring.enabled:
                return self._refused(why, "this server started without API keys; to turn keys on, restart it")
            changes = self.ring.replace(update.plain, update.named)
            self.reloads += 1
            if changes or not quiet:
                log.info("keys reloaded from %s (%s): %s (only the keys: other settings take effect on a restart)",
                         self.where, why, changes.summary())
            for note in update.not_applied:
                log.warning("keys reloaded from %s: %s", self.where, note)
            if self.on_names is not None:
                self.on_names(self.ring.names)
            return True

    def _refused(self, why: str, reason: str) -> bool:
        self.failures += 1
        log.error("keys not reloaded from %s (%s): %s; the keys in use stay as they were", self.where, why, reason)
        return False
