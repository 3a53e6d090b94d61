"""A webhook receiver for the alert tests (stdlib only, loopback only): it records every POST body and answers
as scripted: ``fail_first`` answers of ``fail_status``, then 200; or it hangs until released."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class WebhookReceiver:
    def __init__(self, fail_first: int = 0, fail_status: int = 503, hang: bool = False) -> None:
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.hang = hang
        self.release = threading.Event()  # a hanging receiver answers once this is set
        self.attempts = 0
        self.bodies: list[dict[str, Any]] = []  # the bodies it answered 200 to
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
                with receiver.lock:
                    receiver.attempts += 1
                    failing = receiver.attempts <= receiver.fail_first
                if receiver.hang:
                    receiver.release.wait(timeout=60)
                status = receiver.fail_status if failing else 200
                if not failing:
                    with receiver.lock:
                        receiver.bodies.append(body)
                try:
                    self.send_response(status)
                    self.send_header("content-length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the sender gave up and closed the connection

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook?token=s3cret"

    def wait_bodies(self, n: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while len(self.bodies) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the receiver got {len(self.bodies)} of {n} webhook bodies")
            time.sleep(0.02)
        return list(self.bodies)

    def __enter__(self) -> "WebhookReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)
