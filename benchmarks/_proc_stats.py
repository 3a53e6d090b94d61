"""What a server process holds, read from outside it: RSS, open file descriptors (and what they are), TCP
connections to a port (the upstream's, Redis's), and its asyncio task count (the ``unimodel_asyncio_tasks``
gauge of its ``/metrics``).

psutil when it is installed; else Linux's /proc, read by hand (only the few fields needed: ``VmRSS`` of
/proc/PID/status, the entries of /proc/PID/fd, and the socket inodes of /proc/PID/net/tcp{,6} that those fds
point to).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import httpx

ESTABLISHED = "01"  # the state column of /proc/net/tcp


@dataclass(frozen=True)
class Sample:
    rss_mib: float
    fds: int
    upstream_connections: int
    asyncio_tasks: Optional[int]
    fd_kinds: Counter[str]  # what the fds are: socket, pipe, anon_inode:[eventpoll], a file's path
    redis_connections: int = 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (all its threads), from /proc/PID/stat (psutil when
    installed)."""
    try:
        import psutil

        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)
    except ImportError:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def fd_kinds(pid: int) -> Counter[str]:
    kinds: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kinds[target.split(":[", 1)[0] if target.startswith(("socket:", "pipe:")) else target] += 1
    return kinds


def connections_to(pid: int, port: int) -> int:
    """Established TCP connections of process ``pid`` whose remote end is ``port`` (on any address)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed between listdir and readlink
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as fh:
                next(fh)  # the header
                for line in fh:
                    cols = line.split()
                    remote_port = int(cols[2].rsplit(":", 1)[1], 16)
                    if remote_port == port and cols[3] == ESTABLISHED and cols[9] in inodes:
                        count += 1
        except FileNotFoundError:
            continue
    return count


def asyncio_tasks(base_url: str, metrics_key: Optional[str] = None) -> Optional[int]:
    """The server's ``unimodel_asyncio_tasks`` gauge (None when /metrics is off, closed to us, or lacks it); the
    scrape's own task is counted in it, the same way at every sample. ``metrics_key``: the server's
    ``--metrics-key`` (a server with API keys answers /metrics to it only)."""
    root = base_url.removesuffix("/v1")
    headers = {"Authorization": f"Bearer {metrics_key}"} if metrics_key else {}
    resp = httpx.get(root + "/metrics", headers=headers, timeout=10)
    if resp.status_code != 200:
        return None
    for line in resp.text.splitlines():
        if line.startswith("unimodel_asyncio_tasks "):
            return int(float(line.split()[1]))
    return None


def sample(pid: int, base_url: str, upstream_port: Optional[int], redis_port: Optional[int] = None,
           metrics_key: Optional[str] = None) -> Sample:
    kinds = fd_kinds(pid)  # before the scrape, whose own connection would be counted
    return Sample(rss_mib=rss_bytes(pid) / 2**20, fds=sum(kinds.values()),
                  upstream_connections=connections_to(pid, upstream_port) if upstream_port else 0,
                  redis_connections=connections_to(pid, redis_port) if redis_port else 0,
                  fd_kinds=kinds, asyncio_tasks=asyncio_tasks(base_url, metrics_key))
