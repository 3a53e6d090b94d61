"""A real DNS server (Debian's ``dnsmasq``) on a free loopback port, answering only the records a test gives it.

``.ci/run`` installs dnsmasq when it is missing. A test asks for it with :func:`require_dnsmasq`: without it the
test is skipped with the command that installs it, unless ``UNIMODEL_REQUIRE_DNSMASQ`` is 1 (``.ci/run`` sets
it), where it fails. The server answers on UDP and TCP (a long answer is truncated over UDP and asked again
over TCP, as from any resolver) from its command line only: no ``/etc/hosts``, no ``resolv.conf``, no
upstream, and ``--local`` for the test's domain, so a name it was not given is NXDOMAIN rather than REFUSED.
:meth:`DnsServer.replace` restarts it on the same port with other records: replicas that come and go.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

from tests.support.live_server import free_port

REQUIRE_ENV = "UNIMODEL_REQUIRE_DNSMASQ"
#: the domain the test's names live in (every name a test gives ends in it)
DOMAIN = "pool.test"


def dnsmasq_path() -> Optional[str]:
    """dnsmasq's executable (in /usr/sbin, off a normal user's PATH), or None."""
    return shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")


def require_dnsmasq() -> str:
    """dnsmasq's path, or skip (fail when ``$UNIMODEL_REQUIRE_DNSMASQ`` is 1)."""
    path = dnsmasq_path()
    if path is None:
        reason = "dnsmasq is not installed (apt-get install dnsmasq-base; .ci/run does this)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@dataclass
class Records:
    """What the server answers: ``hosts`` name → addresses (A and AAAA), ``srv`` name → (target, port)s,
    ``cnames`` alias → name (an SRV target that is an alias comes without addresses in the additional section)."""

    hosts: dict[str, Sequence[str]] = field(default_factory=dict)
    srv: dict[str, Sequence[tuple[str, int]]] = field(default_factory=dict)
    cnames: dict[str, str] = field(default_factory=dict)

    def arguments(self) -> list[str]:
        args = [f"--host-record={name},{address}" for name, addresses in self.hosts.items()
                for address in addresses]
        args += [f"--cname={alias},{name}" for alias, name in self.cnames.items()]
        args += [f"--srv-host={name},{target},{port}" for name, targets in self.srv.items()
                 for target, port in targets]
        return args


class DnsServer:
    def __init__(self, records: Records) -> None:
        self.exe = require_dnsmasq()
        self.records = records
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="unimodel-dns-"))
        self.proc: Optional[subprocess.Popen[bytes]] = None

    @property
    def nameservers(self) -> list[tuple[str, int]]:
        """For ``parse_upstream(..., nameservers=…)``."""
        return [("127.0.0.1", self.port)]

    def start(self, timeout_s: float = 10.0) -> "DnsServer":
        log = open(self.dir / "dnsmasq.log", "ab")
        try:
            self.proc = subprocess.Popen(
                [self.exe, "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-poll",
                 f"--port={self.port}", "--listen-address=127.0.0.1", "--bind-interfaces", f"--local=/{DOMAIN}/",
                 "--cache-size=0", f"--pid-file={self.dir / 'dnsmasq.pid'}",
                 f"--host-record=ready.{DOMAIN},127.0.0.9", *self.records.arguments()],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()
        self._wait_ready(timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        import dns.exception
        import dns.resolver

        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = self.port
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                break
            try:
                resolver.resolve(f"ready.{DOMAIN}", "A", lifetime=0.5)
                return
            except dns.exception.DNSException:
                time.sleep(0.05)
        output = (self.dir / "dnsmasq.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"dnsmasq did not start on port {self.port}:\n{output}")

    def replace(self, records: Records, timeout_s: float = 10.0) -> None:
        """Answer ``records`` from now on (the server restarts on the same port)."""
        self.stop()
        self.records = records
        self.start(timeout_s)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None

    def __enter__(self) -> "DnsServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
