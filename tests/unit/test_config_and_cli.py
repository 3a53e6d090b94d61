"""Settings precedence (flags > env > file) and the CLI's one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from unimodel.config import ConfigError, Settings


def test_precedence_flags_over_env_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "unimodel.yaml"
    cfg.write_text("port: 7001\nhost: 0.0.0.0\nupstream: http://file:1/v1\nserved-model-name: from-file\n")
    monkeypatch.setenv("UNIMODEL_PORT", "7002")
    monkeypatch.setenv("UNIMODEL_UPSTREAM", "http://env:1/v1")
    s = Settings.load(cfg, upstream="http://flag:1/v1", host=None)
    assert s.upstream == ["http://flag:1/v1"]  # flag beats env and file
    assert s.port == 7002  # env beats file
    assert s.host == "0.0.0.0"  # file beats default
    assert s.served_model_name == "from-file"


@pytest.mark.parametrize("content,fragment", [
    ("port: [1, 2", "not valid YAML"),
    ("- a\n- b\n", "mapping"),
    ("port: 99999\n", "port"),
    ("no_such_setting: 1\n", "no_such_setting"),
    ("1: 2\n", "setting names are text"),
    ("since: 2001-13-45\n", "a value YAML cannot read"),
    ("port: !!int x\n", "a value YAML cannot read"),
    ("shutdown_grace_s: .inf\n", "shutdown_grace_s.*finite"),
    ("kv_memory_gb: .nan\n", "kv_memory_gb.*finite"),
    ("alerts:\n  - {name: a, kind: error_rate, threshold: .nan}\n", "threshold.*finite"),
    ("routes:\n  r: {default_temperature: .nan}\n", "default_temperature.*finite"),
])
def test_bad_config_file(tmp_path: Path, content: str, fragment: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content)
    with pytest.raises(ConfigError, match=fragment):
        Settings.load(cfg)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Settings.load(tmp_path / "missing.yaml")


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("port: 8001\n# café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.yaml is not UTF-8 text"):
        Settings.load(cfg)


def test_serve_with_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("# café\n".encode("latin-1"))
    proc = _cli("serve", "--config", str(cfg))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("unimodel: error: ") and "not UTF-8" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "unimodel.cli", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("args,fragment", [
    (["serve", "--no-such-flag"], "No such option"),
    (["serve", "--port", "abc"], "port"),
    (["serve", "--engine", "warp"], "engine"),
    (["serve", "--engine", "upstream"], "--upstream"),
    (["serve", "--engine", "upstream", "--upstream", "gpu-box:8000"], "http"),
])
def test_cli_bad_flags_exit_2_with_one_line(args: list[str], fragment: str) -> None:
    proc = _cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("unimodel: error:") and fragment in lines[0]


def test_cli_help_everywhere() -> None:
    assert _cli("--help").returncode == 0
    out = _cli("serve", "--help")
    assert out.returncode == 0 and "--upstream" in out.stdout
