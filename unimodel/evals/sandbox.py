"""Run a candidate program and its tests in a limited child process.

Written by hand over ``subprocess`` and ``resource``: the limits are a few system calls, and a sandboxing
library would bring far more than this needs.

What it guarantees (on Linux):

- **a fresh interpreter**: ``python -I -S`` (no site-packages, no user site, no ``PYTHON*`` variables), an
  empty temporary working directory removed afterwards, a minimal environment, stdin from ``/dev/null``;
- **CPU time**: ``RLIMIT_CPU`` ends a busy loop with SIGXCPU, and one second later (a child that catches
  it) with SIGKILL at the hard limit; no limit here can be raised by the child past its hard value;
- **wall-clock time**: a sleeping or blocked child is killed (its whole process group) after ``wall_seconds``;
- **memory**: ``RLIMIT_AS`` caps the address space, so a memory hog gets ``MemoryError`` (or dies);
- **output**: stdout and stderr go to files capped by ``RLIMIT_FSIZE`` (Python then fails the write with
  "File too large"); no core dumps;
- **network**: with ``unshare -rn`` (a user and network namespace, tried once and used when the kernel
  allows it) the child and every process it starts have no usable network interface at all; in any case a
  preamble makes ``socket.socket``, ``socket.create_connection`` and ``socket.getaddrinfo`` raise, which
  alone (where ``unshare`` is not allowed) stops ordinary Python code but not a determined program
  (``ctypes``, another process).

What it does not guarantee: the filesystem is not hidden (the child can read what this user can, and write
outside its directory), it may start processes (a child that leaves the process group outlives the kill),
and it is no defence against a hostile program that escapes the interpreter. It is meant for checking the
answers of a model under evaluation, not for running untrusted code on a shared host.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# Runs in the child before the candidate: limits first, then the socket block, then the code and its tests
# in one namespace (``__name__`` is not ``__main__``, so a demo block in the answer does not run).
PREAMBLE = """\
import resource, sys
_cpu, _mem, _fsize = (int(a) for a in sys.argv[1:4])
resource.setrlimit(resource.RLIMIT_CPU, (_cpu, _cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (_mem, _mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (_fsize, _fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
import socket, _socket
def _no_network(*args, **kwargs):
    raise PermissionError("network access is disabled in the sandbox")
class _NoSocket(_socket.socket):  # a class still, so modules that subclass socket.socket import
    __init__ = _no_network
socket.socket = _socket.socket = _NoSocket
socket.create_connection = socket.getaddrinfo = _no_network
del resource, socket, _socket, _NoSocket, _cpu, _mem, _fsize
_ns = {"__name__": "solution"}
with open("solution.py", encoding="utf-8") as _f:
    exec(compile(_f.read(), "solution.py", "exec"), _ns)
with open("tests.py", encoding="utf-8") as _f:
    exec(compile(_f.read(), "tests.py", "exec"), _ns)
"""

Status = Literal["passed", "failed", "timeout", "memory", "output_limit", "killed"]


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int = 5
    wall_seconds: float = 10.0
    memory_bytes: int = 512 * 2**20
    output_bytes: int = 1 * 2**20


@dataclass(frozen=True)
class Outcome:
    status: Status
    detail: str = ""  # the last line of stderr, or what limit was hit

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.lru_cache(maxsize=1)
def network_isolation() -> Literal["unshare", "python"]:
    """``unshare`` when this kernel lets an unprivileged user make a network namespace, else ``python``."""
    tool = shutil.which("unshare")
    if tool is None or not sys.platform.startswith("linux"):
        return "python"
    try:
        done = subprocess.run([tool, "-rn", "true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return "python"
    return "unshare" if done.returncode == 0 else "python"


def run_tests(code: str, tests: str, limits: Limits = Limits()) -> Outcome:
    """Run ``code`` and then ``tests`` (plain ``assert`` statements) under ``limits``; passed means exit 0."""
    with tempfile.TemporaryDirectory(prefix="unimodel-sandbox-") as tmp:
        workdir = Path(tmp)
        (workdir / "solution.py").write_text(code, encoding="utf-8")
        (workdir / "tests.py").write_text(tests, encoding="utf-8")
        command = [sys.executable, "-I", "-S", "-c", PREAMBLE, str(limits.cpu_seconds), str(limits.memory_bytes),
                   str(limits.output_bytes)]
        if network_isolation() == "unshare":
            command = [shutil.which("unshare") or "unshare", "-rn", *command]
        env = {"PATH": os.defpath, "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
        with open(workdir / "stdout", "wb") as out, open(workdir / "stderr", "wb") as err:
            proc = subprocess.Popen(command, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, start_new_session=True)
            timed_out = False
            try:
                proc.wait(timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc.pid)
                proc.wait()
        stderr = (workdir / "stderr").read_bytes()[-4000:].decode("utf-8", "replace")
    return _outcome(proc.returncode, timed_out, stderr, limits)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _outcome(returncode: int, timed_out: bool, stderr: str, limits: Limits) -> Outcome:
    last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
    if timed_out:
        return Outcome("timeout", f"killed after {limits.wall_seconds:g} s of wall-clock time")
    if returncode == -signal.SIGXCPU:
        return Outcome("timeout", f"killed after {limits.cpu_seconds} s of CPU time")
    if returncode == -signal.SIGXFSZ or "File too large" in last:
        return Outcome("output_limit", f"wrote more than {limits.output_bytes} bytes of output")
    if "MemoryError" in last:
        return Outcome("memory", f"exceeded {limits.memory_bytes // 2**20} MiB of memory")
    if returncode == -signal.SIGKILL:
        return Outcome("killed", "killed (the CPU hard limit, or the system out of memory)")
    if returncode == 0:
        return Outcome("passed")
    return Outcome("failed", last[:300] or f"exit status {returncode}")
