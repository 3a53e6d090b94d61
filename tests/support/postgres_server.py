"""A real PostgreSQL (Debian's) on a free loopback port in a temporary directory, started and stopped by tests.

``.ci/run`` installs Debian's ``postgresql`` when it is missing; its ``initdb``/``pg_ctl`` live in
``/usr/lib/postgresql/N/bin``. PostgreSQL refuses to run as root, so as root every command runs as the
``postgres`` user (``runuser``) on a data directory it owns. ``fsync`` and full-page writes are off (throwaway
databases); commits still wait for their WAL write, so a stop loses no committed row. The server can be stopped
and started again on the same port and data (to test what happens while the database is down).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Optional

from tests.support.live_server import free_port


def _bin_dir() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name))
    if not dirs:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql; .ci/run does this)")
    return Path(dirs[-1])


class PostgresServer:
    def __init__(self, port: Optional[int] = None) -> None:
        self.bin = _bin_dir()
        self.port = port or free_port()
        self.root = Path(tempfile.mkdtemp(prefix="unimodel-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.logfile = self.root / "server.log"
        self.sockets.mkdir()
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
            for path in (self.root, self.sockets):
                shutil.chown(path, "postgres", "postgres")
        self.running = False

    @property
    def url(self) -> str:
        """The ``postgres`` database (the maintenance one); tests make their own with :meth:`create_database`."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout_s: float = 60.0) -> None:
        done = subprocess.run([*self.as_postgres, str(self.bin / args[0]), *args[1:]], cwd=self.root,
                              capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr.strip()}\n{log[-2000:]}")

    def start(self) -> "PostgresServer":
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        # no fsync (the OS keeps what was written; only a machine crash would lose it), but commits still wait
        # for their WAL write: an immediate stop must lose no committed row
        options = (f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-o", options, "-w", "-t", "30", "start")
        self.running = True
        return self

    def stop(self) -> None:
        """Stop now (``-m immediate``: connections are cut, as when a database host dies)."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")
            self.running = False

    def create_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
