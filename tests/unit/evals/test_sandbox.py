"""The sandbox: a right answer passes, a wrong one fails, and each limit stops what it is meant to stop."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from unimodel.evals import sandbox
from unimodel.evals.sandbox import Limits, run_tests

TESTS = "assert double(2) == 4\nassert double(-3) == -6\n"
FAST = Limits(cpu_seconds=1, wall_seconds=3.0, memory_bytes=256 * 2**20, output_bytes=64 * 1024)


def test_a_correct_solution_passes() -> None:
    assert run_tests("def double(x):\n    return 2 * x\n", TESTS, FAST).status == "passed"


def test_a_wrong_solution_fails_naming_the_assertion() -> None:
    outcome = run_tests("def double(x):\n    return x + 2\n", TESTS, FAST)
    assert outcome.status == "failed" and "AssertionError" in outcome.detail


def test_a_demo_block_in_the_answer_does_not_run() -> None:
    code = "def double(x):\n    return 2 * x\nif __name__ == '__main__':\n    input()\n    raise SystemExit(3)\n"
    assert run_tests(code, TESTS, FAST).passed


def test_an_infinite_loop_is_stopped_by_the_cpu_limit() -> None:
    limits = Limits(cpu_seconds=1, wall_seconds=60.0, memory_bytes=256 * 2**20)  # a busy CI host: CPU first
    outcome = run_tests("def double(x):\n    while True:\n        pass\n", TESTS, limits)
    assert outcome.status == "timeout" and "CPU" in outcome.detail


def test_a_sleeper_is_stopped_by_the_wall_clock() -> None:
    limits = Limits(cpu_seconds=5, wall_seconds=1.0, memory_bytes=256 * 2**20)
    outcome = run_tests("import time\ndef double(x):\n    time.sleep(60)\n", TESTS, limits)
    assert outcome.status == "timeout" and "wall-clock" in outcome.detail


def test_a_memory_hog_is_stopped_by_the_memory_limit() -> None:
    outcome = run_tests("def double(x):\n    return len(bytearray(1024 * 2**20))\n", TESTS, FAST)
    assert outcome.status == "memory"


def test_endless_output_is_stopped_by_the_output_limit() -> None:
    outcome = run_tests("def double(x):\n    while True:\n        print('x' * 1000)\n", TESTS, FAST)
    assert outcome.status == "output_limit"


@pytest.fixture()
def listener() -> Iterator[int]:
    """A loopback port that accepts connections: reachable from this process, so not from the sandbox."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def test_python_code_cannot_open_a_socket(listener: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "network_isolation", lambda: "python")  # the preamble alone
    reach = (f"import socket, urllib.request\ndef double(x):\n"
             f"    socket.create_connection(('127.0.0.1', {listener}), timeout=2).close()\n    return 2 * x\n")
    outcome = run_tests(reach, TESTS, FAST)
    assert outcome.status == "failed" and "network access is disabled" in outcome.detail


def test_in_a_network_namespace_not_even_a_child_process_reaches_the_network(listener: int) -> None:
    if sandbox.network_isolation() != "unshare":
        pytest.skip("this kernel does not let an unprivileged user make a network namespace")
    connect = f"import socket; socket.create_connection(('127.0.0.1', {listener}), timeout=2).close()"
    subprocess.run([sys.executable, "-c", connect], check=True, timeout=30)  # it does reach from out here
    reach = (f"import subprocess, sys\ndef double(x):\n"  # a new interpreter: no socket preamble in it
             f"    subprocess.run([sys.executable, '-c', {connect!r}], check=True, timeout=5)\n    return 2 * x\n")
    outcome = run_tests(reach, TESTS, FAST)
    assert outcome.status == "failed" and "CalledProcessError" in outcome.detail
