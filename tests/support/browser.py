"""Debian's chromium, headless, driven over the DevTools protocol: what the dashboard's browser test needs.

:class:`Chromium` starts the browser with a fresh profile and ``--remote-debugging-port=0`` and reads the port
it chose from the profile's ``DevToolsActivePort`` file; :meth:`Chromium.new_page` opens a tab and returns a
:class:`Page`, one websocket (``websockets``' sync client) speaking the protocol: commands and their answers,
and the events in between kept in ``events`` (console calls, uncaught exceptions, log entries such as a CSP
violation or a failed load). Every wait has a deadline. Written over the raw protocol rather than Playwright,
whose Python package brings its own driver and expects browsers it downloads itself; what a test needs here
is a handful of commands.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import httpx
from websockets.sync.client import ClientConnection, connect

CANDIDATES = ("chromium", "chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--no-proxy-server", "--disable-extensions", "--mute-audio",
         "--window-size=1280,1500", "--hide-scrollbars")


def find_chromium() -> Optional[str]:
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


class BrowserError(RuntimeError):
    pass


class Page:
    def __init__(self, ws_url: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._stack = contextlib.ExitStack()  # websockets ≥ 17.1 wants connect() used as a context manager
        self.ws: ClientConnection = self._stack.enter_context(
            connect(ws_url, max_size=64 * 1024 * 1024, open_timeout=timeout_s))
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)

    def close(self) -> None:
        self._stack.close()

    def send(self, method: str, params: Optional[dict[str, Any]] = None, timeout_s: Optional[float] = None) -> Any:
        """One command; its ``result`` (events that arrive meanwhile go to ``events``)."""
        ident = next(self._ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params or {}}))
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            message = self._receive(deadline, method)
            if message.get("id") == ident:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})

    def _receive(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"chromium did not answer {waiting_for} in time")
        message: dict[str, Any] = json.loads(self.ws.recv(timeout=remaining))
        if "method" in message:
            self.events.append(message)
        return message

    def wait_event(self, method: str, timeout_s: Optional[float] = None) -> dict[str, Any]:
        seen = next((e for e in self.events if e["method"] == method), None)
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while seen is None:
            message = self._receive(deadline, method)
            if message.get("method") == method:
                seen = message
        return seen

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: Optional[float] = None) -> Any:
        """Polls ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expression!r} stayed falsy")
            time.sleep(0.1)

    def navigate(self, url: str) -> None:
        self.events = [e for e in self.events if e["method"] != "Page.loadEventFired"]
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"navigating to the page failed: {result['errorText']}")
        self.wait_event("Page.loadEventFired")

    def screenshot(self, path: Path) -> Path:
        result = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        path.write_bytes(base64.b64decode(result["data"]))
        return path

    def console_errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries (CSP violations, failed loads) so far."""
        found = []
        for event in self.events:
            params = event.get("params", {})
            if event["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in
                                                    params.get("args", [])))
            elif event["method"] == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                found.append("exception: " + str(details.get("exception", {}).get("description") or details))
            elif event["method"] == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                found.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
        return found


class Chromium:
    """``with Chromium(path) as browser: page = browser.new_page()`` — stopped and its profile removed on exit.
    ``flags`` go on the command line after the usual ones (``--host-resolver-rules=MAP name 127.0.0.1``: a host
    name that leads to loopback, as a DNS-rebound one does)."""

    def __init__(self, executable: str, timeout_s: float = 30.0, flags: tuple[str, ...] = ()) -> None:
        self.executable = executable
        self.timeout_s = timeout_s
        self.flags = flags
        self.profile = Path(tempfile.mkdtemp(prefix="unimodel-chromium-"))
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.port = 0
        self.pages: list[Page] = []

    def __enter__(self) -> "Chromium":
        self._stderr = open(self.profile.parent / f"{self.profile.name}.log", "wb")
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        try:
            self.process = subprocess.Popen(
                [self.executable, *FLAGS, *self.flags, f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
                 "about:blank"], stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=subprocess.STDOUT)
            while not (active.exists() and active.read_text().strip()):
                if self.process.poll() is not None:
                    raise BrowserError(f"chromium exited with {self.process.returncode}: {self.log()[-2000:]}")
                if time.monotonic() > deadline:
                    raise BrowserError(f"chromium opened no DevTools port in {self.timeout_s:.0f} s: "
                                       f"{self.log()[-2000:]}")
                time.sleep(0.05)
            self.port = int(active.read_text().split()[0])
        except BaseException:
            self.__exit__()
            raise
        return self

    def log(self) -> str:
        self._stderr.flush()
        return (self.profile.parent / f"{self.profile.name}.log").read_text(errors="replace")

    def new_page(self) -> Page:
        with httpx.Client(timeout=self.timeout_s, trust_env=False) as client:
            target = client.put(f"http://127.0.0.1:{self.port}/json/new?about:blank").raise_for_status().json()
        page = Page(target["webSocketDebuggerUrl"], self.timeout_s)
        self.pages.append(page)
        for domain in ("Page", "Runtime", "Log"):
            page.send(f"{domain}.enable")
        return page

    def __exit__(self, *exc: object) -> None:
        for page in self.pages:
            try:
                page.close()
            except Exception:
                pass
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._stderr.close()
        (self.profile.parent / f"{self.profile.name}.log").unlink(missing_ok=True)
        shutil.rmtree(self.profile, ignore_errors=True)
