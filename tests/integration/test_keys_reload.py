"""Keys change without a restart (``server/reload.py``), on a real ``unimodel serve`` process under load: ``unimodel
keys revoke`` while clients of two keys keep sending (the revoked one is refused within seconds, the other never
fails), ``unimodel keys create`` (the new key works), a broken edit (one error line, the keys stay), SIGHUP (the
server reloads instead of dying), ``--api-key-file`` rotation, and ``--workers 2`` (each worker reloads, and so
does each worker uvicorn replaces on the main process's SIGHUP)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import ANSWER
from tests.support.live_server import free_port
from tests.support.scripted_upstream import ScriptedUpstream
from tests.support.serve_process import stop, wait_ready, worker_pids

CLI = [sys.executable, "-m", "unimodel.cli"]
BODY = {"model": "raw-plain", "messages": [{"role": "user", "content": "hi"}]}
WAIT_S = 30.0  # the longest any change may take to show (the files are looked at every 2 s)


def _keys(*args: str) -> str:
    """``unimodel keys ARGS`` as a user runs it; its stdout."""
    done = subprocess.run([*CLI, "keys", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _create(name: str) -> tuple[str, str]:
    """A new key: its secret, and its item for the config file's ``keys:`` list."""
    out = _keys("create", name)
    secret = re.findall(r"sk-um-[A-Za-z0-9_-]{43}", out)[0]
    return secret, out[out.index("keys:\n") + len("keys:\n"):]


def _post(port: int, key: str, client: httpx.Client | None = None) -> httpx.Response:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    headers = {"Authorization": f"Bearer {key}"}
    if client is not None:
        return client.post(url, json=BODY, headers=headers)
    with httpx.Client(timeout=20) as fresh:  # a new connection: the kernel spreads them over the workers
        return fresh.post(url, json=BODY, headers=headers)


def _answered(port: int, key: str, tries: int = 10) -> httpx.Response:
    """A new connection's answer while uvicorn swaps its workers after a SIGHUP: a connection that reached the
    worker being shut down is closed unanswered (uvicorn's restart, nothing of ours), so it is asked again."""
    for _ in range(tries - 1):
        try:
            return _post(port, key)
        except httpx.TransportError:
            time.sleep(0.2)
    return _post(port, key)


def _until(what: str, check: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout_s:.0f} s: {what}")


@dataclass
class Load:
    """Clients sending one key's requests back to back, each on its own connection, until stopped."""

    port: int
    key: str
    results: list[tuple[float, float, int, str]] = field(default_factory=list)  # (start, end, status, body)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=20) as client:
            while not self.stop.is_set():
                start = time.monotonic()
                try:
                    resp = _post(self.port, self.key, client)
                    status, text = resp.status_code, resp.text
                except httpx.HTTPError as exc:
                    status, text = 0, repr(exc)
                self.results.append((start, time.monotonic(), status, text))


@contextmanager
def _load(port: int, key: str, clients: int = 3) -> Iterator[Load]:
    load = Load(port, key)
    threads = [threading.Thread(target=load.run, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    try:
        yield load
    finally:
        load.stop.set()
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads)


@contextmanager
def _serve(upstream: ScriptedUpstream, cfg: Path, log: Path, *extra: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [*CLI, "serve", "--config", str(cfg), "--engine", "upstream", "--upstream", upstream.base_url,
             "--port", str(port), "--shutdown-drain-s", "0", *extra],
            stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_ready(f"http://127.0.0.1:{port}/health", proc)
        yield port, proc
    finally:
        stop(proc)


def _reload_lines(log: Path) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if "keys reloaded" in line
            or "keys not reloaded" in line]


def test_revoke_under_load_create_broken_edit_sighup_and_key_file(scripted_upstream: ScriptedUpstream,
                                                                   tmp_path: Path) -> None:
    a, a_item = _create("team-a")
    b, b_item = _create("team-b")
    cfg, log = tmp_path / "unimodel.yaml", tmp_path / "serve.log"
    cfg.write_text("keys:\n" + a_item + b_item)
    key_file = tmp_path / "api-keys"
    key_file.write_text("sk-plain-one\n")
    key_file.chmod(0o600)
    with _serve(scripted_upstream, cfg, log, "--api-key-file", str(key_file)) as (port, proc):
        assert _post(port, a).json()["choices"][0]["message"]["content"] == ANSWER
        assert _post(port, b).status_code == 200  # both keys checked once: their answers are cached now

        # revoke team-b while clients of both keys keep sending
        with _load(port, a) as load_a, _load(port, b) as load_b:
            _until("both keys under load", lambda: len(load_a.results) > 5 and len(load_b.results) > 5)
            out = _keys("revoke", "team-b", "--config", str(cfg))
            assert "refuses it within seconds" in out
            _until("team-b refused", lambda: any(s == 401 for _, _, s, _ in load_b.results))
            first_401 = min(end for _, end, s, _ in load_b.results if s == 401)
            _until("team-b refused for a while", lambda: sum(1 for start, _, _, _ in load_b.results
                                                              if start > first_401) > 20)
            _until("team-a still served after that", lambda: sum(1 for start, _, _, _ in load_a.results
                                                                 if start > first_401) > 20)
        assert {s for _, _, s, _ in load_a.results} == {200}  # the other key never failed
        after = [(s, text) for start, _, s, text in load_b.results if start > first_401]
        assert {s for s, _ in after} == {401}  # once refused, refused: no request went back to the old keys
        assert "has been revoked" in after[0][1]
        assert any(s == 200 for _, _, s, _ in load_b.results)  # it did serve before
        assert any("revoked team-b" in line for line in _reload_lines(log))

        # a new key works without a restart (the item appended in place, as an editor would)
        c, c_item = _create("team-c")
        assert _post(port, c).status_code == 401  # unknown yet (and remembered as wrong)
        with open(cfg, "a") as f:
            f.write(c_item)
        _until("team-c served", lambda: _post(port, c).status_code == 200)
        assert any("added team-c" in line for line in _reload_lines(log))

        # a broken edit: one error line, every key as it was
        good = cfg.read_text()
        cfg.write_text(good + "  - name: [unclosed\n")
        _until("the broken file reported", lambda: any("keys not reloaded" in line for line in _reload_lines(log)))
        [error] = [line for line in _reload_lines(log) if "keys not reloaded" in line]
        assert "not valid YAML" in error and "the keys in use stay as they were" in error
        cfg.write_text(good)
        _until("the fixed file read", lambda: "no change" in _reload_lines(log)[-1])

        # SIGHUP reads the keys again (and does not stop the server, as it would by default)
        proc.send_signal(signal.SIGHUP)
        _until("the SIGHUP reload", lambda: any("(SIGHUP)" in line for line in _reload_lines(log)))
        assert proc.poll() is None and _post(port, a).status_code == 200

        # --api-key-file: a plain key rotated without a restart
        assert _post(port, "sk-plain-one").status_code == 200
        key_file.write_text("sk-plain-two\n")
        _until("the new plain key served", lambda: _post(port, "sk-plain-two").status_code == 200)
        assert _post(port, "sk-plain-one").status_code == 401
    lines = _reload_lines(log)
    assert not any(secret in line for line in lines for secret in (a, b, c, "sk-plain"))
    assert not any("scrypt$" in line for line in lines)


def test_each_of_two_workers_reloads_and_so_do_the_workers_a_sighup_starts(scripted_upstream: ScriptedUpstream,
                                                                            tmp_path: Path) -> None:
    a, a_item = _create("team-a")
    b, b_item = _create("team-b")
    cfg, log = tmp_path / "unimodel.yaml", tmp_path / "serve.log"
    cfg.write_text("keys:\n" + a_item + b_item)
    with _serve(scripted_upstream, cfg, log, "--workers", "2", "--no-idempotency") as (port, proc):
        _until("two workers", lambda: len(worker_pids(proc.pid)) == 2)
        _until("both workers serving team-b", lambda: all(_post(port, b).status_code == 200 for _ in range(10)))
        with _load(port, a) as load_a:
            _keys("revoke", "team-b", "--config", str(cfg))
            _until("every worker reloaded", lambda: sum("revoked team-b" in line for line in _reload_lines(log)) >= 2)
            # then whichever worker a new connection reaches refuses it
            assert {_post(port, b).status_code for _ in range(20)} == {401}
        assert load_a.results and {s for _, _, s, _ in load_a.results} == {200}

        # a file that leaves no key at all would open the server to anyone: each worker refuses it
        good = cfg.read_text()
        cfg.write_text("keys: []\n")
        _until("both workers refused the empty file",
               lambda: sum("no API key at all" in line for line in _reload_lines(log)) >= 2)
        assert {_post(port, a).status_code for _ in range(10)} == {200}
        assert {_post(port, b).status_code for _ in range(10)} == {401}
        seen = len(_reload_lines(log))
        cfg.write_text(good)
        _until("both workers read the file again",
               lambda: sum("keys reloaded" in line for line in _reload_lines(log)[seen:]) >= 2)

        # SIGHUP to the main process: uvicorn replaces the workers one by one; a new worker starts from the
        # settings read at start-up (team-b active) and reads the file's keys before it serves. (On a busy machine
        # uvicorn may give up on a new worker that is slow to start, keeping the old one: then nothing changed.)
        seen = len(_reload_lines(log))
        proc.send_signal(signal.SIGHUP)
        _until("a new worker with the file's keys, or uvicorn's restart given up",
               lambda: any("(start): revoked team-b" in line for line in _reload_lines(log)[seen:])
               or "aborting the restart" in log.read_text(errors="replace"), timeout_s=90)
        assert {_answered(port, b).status_code for _ in range(20)} == {401}
        assert {_answered(port, a).status_code for _ in range(10)} == {200}
