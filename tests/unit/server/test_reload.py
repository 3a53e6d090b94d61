"""The key reload (``server/reload.py``) over real files and a real key ring, without a server: what is applied,
what is refused (one error line, the keys unchanged), what is named as waiting for a restart, and the watch.
The whole path through a running ``unimodel serve`` is ``tests/integration/test_keys_reload.py``."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest

from unimodel.compose import key_source
from unimodel.config import Settings
from unimodel.errors import AuthenticationError
from unimodel.gateway.keyhash import hash_key, key_prefix, new_key
from unimodel.gateway.keys import KeyRing
from unimodel.server.reload import KeyReload



def _item(name: str, secret: str, extra: str = "") -> str:
    return (f"  - name: {name}\n    prefix: {key_prefix(secret)}\n    key_hash: {hash_key(secret, n=2**10)}\n"
            + extra)


def _reload(cfg: Path, **flags: object) -> tuple[KeyReload, KeyRing, Settings]:
    settings = Settings.load(cfg, engine="upstream", upstream="http://127.0.0.1:9/v1", **flags)
    source = key_source(settings)
    assert source is not None and source.files == (cfg,)
    ring = KeyRing(settings.api_keys, settings.keys)
    return KeyReload(ring, source, poll_s=0.05), ring, settings


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "unimodel.server"]


async def test_a_file_that_does_not_hold_changes_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a, b = new_key(), new_key()
    cfg = tmp_path / "unimodel.yaml"
    cfg.write_text("keys:\n" + _item("a", a))
    reload, ring, _ = _reload(cfg)
    caplog.set_level(logging.INFO, "unimodel.server")
    for broken, why in [("keys:\n  - name: [x\n", "not valid YAML"),
                        ("keys:\n" + _item("a", a) + _item("a", b), "two keys are named 'a'"),
                        ("keys:\n" + _item("a", a, "    routes: [nowhere]\n"), "the route 'nowhere'"),
                        ("keys: []\n", "no API key at all")]:
        cfg.write_text(broken)
        assert await reload.reload("test") is False
        assert why in _lines(caplog)[-1] and "the keys in use stay as they were" in _lines(caplog)[-1]
        assert (await ring.caller(a)).name == "a"
    assert reload.failures == 4 and reload.reloads == 0


async def test_keys_are_applied_and_other_settings_named_as_waiting(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    a, c = new_key(), new_key()
    cfg = tmp_path / "unimodel.yaml"
    cfg.write_text("keys:\n" + _item("a", a))
    reload, ring, _ = _reload(cfg)
    caplog.set_level(logging.INFO, "unimodel.server")
    cfg.write_text("max_n: 3\nkeys:\n" + _item("a", a, "    revoked: true\n") + _item("c", c, "    rpm: 5\n"))
    assert await reload.reload("SIGHUP") is True
    info, *warnings = _lines(caplog)
    assert re.search(r"keys reloaded from .*unimodel\.yaml \(SIGHUP\): added c; revoked a \(only the keys", info)
    assert warnings == [f"keys reloaded from {cfg}: the settings max_n changed too: they take effect on a restart",
                        f"keys reloaded from {cfg}: with two keys or more, each key's share of the upstream "
                        "connections (--upstream-key-share) is enforced after a restart",
                        f"keys reloaded from {cfg}: the key 'c' sets rpm, but this server started without limits: "
                        "they are enforced after a restart"]
    assert (await ring.caller(c)).rpm == 5
    assert a not in " ".join(_lines(caplog)) and "scrypt$" not in " ".join(_lines(caplog))


async def test_a_server_without_keys_does_not_turn_them_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = tmp_path / "unimodel.yaml"
    cfg.write_text("max_n: 4\n")
    reload, ring, _ = _reload(cfg)
    caplog.set_level(logging.INFO, "unimodel.server")
    cfg.write_text("keys:\n" + _item("a", new_key()))
    assert await reload.reload("test") is False and not ring.enabled
    assert "started without API keys" in _lines(caplog)[-1]


async def test_the_watch_reads_a_changed_file_and_a_key_file(tmp_path: Path) -> None:
    a, b = new_key(), new_key()
    cfg, key_file = tmp_path / "unimodel.yaml", tmp_path / "keys"
    cfg.write_text("keys:\n" + _item("a", a))
    key_file.write_text("sk-plain-one\n")
    key_file.chmod(0o600)
    settings = Settings.load(cfg, engine="upstream", upstream="http://127.0.0.1:9/v1", api_key_file=key_file)
    source = key_source(settings)
    assert source is not None and source.files == (cfg, key_file)
    ring = KeyRing(settings.api_keys, settings.keys)
    reload = KeyReload(ring, source, poll_s=0.05)
    await reload.start()
    try:
        cfg.write_text("keys:\n" + _item("a", a) + _item("b", b))
        key_file.write_text("sk-plain-two\n")
        async with asyncio.timeout(20):
            while reload.reloads < 2 or len(ring.names) < 3:
                await asyncio.sleep(0.05)
        assert (await ring.caller(b)).name == "b" and (await ring.caller("sk-plain-two")).name.startswith("key-")
    finally:
        await reload.aclose()


async def test_start_reads_the_keys_the_file_holds_now(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A worker uvicorn replaces (SIGHUP to the main process) or restarts builds its app from the settings the main
    process read at start-up: the file may have changed since, so the keys are read as the app starts."""
    a = new_key()
    cfg = tmp_path / "unimodel.yaml"
    cfg.write_text("keys:\n" + _item("a", a))
    reload, ring, _ = _reload(cfg)
    caplog.set_level(logging.INFO, "unimodel.server")
    await reload.start()
    await reload.aclose()
    assert _lines(caplog) == [] and reload.reloads == 1  # read, nothing changed: nothing said
    cfg.write_text("keys:\n" + _item("a", a, "    revoked: true\n"))
    again = KeyReload(ring, reload.source, poll_s=60)  # as a new worker's app, from the old settings
    await again.start()
    await again.aclose()
    assert _lines(caplog) == [f"keys reloaded from {cfg} (start): revoked a (only the keys: other settings take "
                              "effect on a restart)"]
    with pytest.raises(AuthenticationError, match="revoked"):
        await ring.caller(a)


def test_no_source_without_a_file() -> None:
    settings = Settings.load(None, engine="upstream", upstream="http://127.0.0.1:9/v1", api_keys=["sk-x"])
    assert key_source(settings) is None
