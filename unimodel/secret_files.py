"""Secrets read from files: ``--api-key-file``, ``--upstream-api-key-file``, ``--log-secret-file``,
``--metrics-key-file``, ``--admin-key-file`` (each also ``UNIMODEL_<NAME>``, as every setting).

A flag's value shows in the process list (``ps``) to every user of the machine; a file with owner-only
permissions is how secret stores hand a secret to a process (a Kubernetes secret volume, a Docker secret,
``systemd-creds``, a vault agent's template).

The file holds one secret a line: blank lines and lines that start with ``#`` are skipped, and whitespace around
a secret is not part of it (a CRLF file works). ``--api-key-file`` may hold many keys; the others exactly one.
What is refused, as one :class:`~unimodel.errors.ConfigError` line at start-up:

* a file the server cannot read (missing, a directory, no permission), over :data:`MAX_BYTES`, or not UTF-8;
* a file every user of the machine may read or write (``o+r`` or ``o+w``): the secret is not one any more, or
  anyone may put their own key in it. ``chmod 600`` (or ``640``) fixes it;
* a secret with a control character inside it, a file with no secret, or several where one is expected.

A file its group may read or write (``g+r``, ``g+w``) is used, with a warning: secret volumes mounted for a
group (Kubernetes' ``fsGroup``, ``defaultMode: 0440``) are made that way on purpose.
The permission bits are read from the open file (``fstat``), so they are the bits of what is read.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from unimodel.errors import ConfigError

log = logging.getLogger("unimodel.config")

#: the largest secret file read
MAX_BYTES = 64 * 1024


def read_secrets(path: Path, flag: str) -> list[str]:
    """The secrets of ``path``, one a line (``flag`` names the setting in the error messages)."""
    where = f"{flag} {path}"
    try:
        with open(path, "rb") as f:
            _check_mode(os.fstat(f.fileno()).st_mode, where)
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.strerror or exc}") from exc
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_BYTES // 1024} KiB; is it the right file?")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text (byte {exc.start})") from exc
    secrets: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not line.isprintable():
            raise ConfigError(f"{where}: line {number} holds a control character")
        secrets.append(line)
    if not secrets:
        raise ConfigError(f"{where}: holds no secret (one a line; blank lines and # comments are skipped)")
    return secrets


def read_secret(path: Path, flag: str) -> str:
    """The one secret of ``path``."""
    secrets = read_secrets(path, flag)
    if len(secrets) > 1:
        raise ConfigError(f"{flag} {path}: holds {len(secrets)} lines that are not comments; it takes one secret")
    return secrets[0]


def _check_mode(mode: int, where: str) -> None:
    if os.name != "posix":  # no POSIX permission bits to judge
        return
    if mode & (stat.S_IROTH | stat.S_IWOTH):
        raise ConfigError(f"{where}: every user may {'read' if mode & stat.S_IROTH else 'write'} it "
                          f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it (or 640 for its group)")
    if mode & (stat.S_IRGRP | stat.S_IWGRP):
        log.warning("%s: its group may read or write it (mode %04o); chmod 600 it unless the group is meant to",
                    where, stat.S_IMODE(mode))
