"""The connection bounds' pieces that need no socket: the options uvicorn gets (picklable, for ``--workers``),
and fitting ``--max-connections`` into the process's open-file limit."""

from __future__ import annotations

import logging
import pickle
import resource

import pytest

from unimodel.config import Settings
from unimodel.server.connections import BoundedHttpToolsProtocol, ConnectionBounds, fit_to_fd_limit, uvicorn_options
from unimodel.server.run import connection_bounds


def test_the_settings_become_the_bounds_and_the_options_survive_a_worker_handover() -> None:
    s = Settings(max_connections=77, max_header_bytes=4096, header_timeout_s=3, keep_alive_timeout_s=2,
                 stream_write_timeout_s=9)
    bounds = connection_bounds(s)
    assert bounds == ConnectionBounds(77, 4096, 3, 2, 9)
    options = pickle.loads(pickle.dumps(uvicorn_options(bounds)))  # uvicorn pickles its config for workers
    assert options["http"].func is BoundedHttpToolsProtocol and options["http"].keywords == {"bounds": bounds}
    assert options["timeout_keep_alive"] == 2 and options["ws"] == "none"


class Limits:
    def __init__(self, soft: int, hard: int, settable: bool = True) -> None:
        self.soft, self.hard, self.settable = soft, hard, settable

    def get(self, which: int) -> tuple[int, int]:
        return self.soft, self.hard

    def set(self, which: int, limits: tuple[int, int]) -> None:
        if not self.settable or limits[0] > self.hard:
            raise ValueError("not allowed")
        self.soft = limits[0]


@pytest.mark.parametrize(("soft", "hard", "settable", "soft_after", "max_after"), [
    (4096, 8192, True, 4096, 1000),  # room already
    (1024, 8192, True, 1100, 1000),  # the soft limit raised as far as needed
    (1024, 1024, True, 1024, 924),  # the hard limit too low: the cap lowered to fit
    (512, 8192, False, 512, 412),  # not allowed to raise it: the same
])
def test_max_connections_fit_the_open_file_limit(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                                 soft: int, hard: int, settable: bool, soft_after: int,
                                                 max_after: int) -> None:
    limits = Limits(soft, hard, settable)
    monkeypatch.setattr(resource, "getrlimit", limits.get)
    monkeypatch.setattr(resource, "setrlimit", limits.set)
    caplog.set_level(logging.WARNING, logger="unimodel.connections")
    fitted = fit_to_fd_limit(ConnectionBounds(max_connections=1000), reserve=100)
    assert fitted.max_connections == max_after and limits.soft == soft_after
    assert ("lowered to" in caplog.text) is (max_after < 1000)
