"""``unimodel keys``: create prints the secret once and config lines a server accepts; list never shows a
hash; revoke edits the file in place (every other byte kept) and the key then answers 401."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from unimodel import keys_cli
from unimodel.config import Settings
from unimodel.errors import AuthenticationError
from unimodel.gateway.auth import ApiKeyAuth
from unimodel.gateway.keys import REVOKED
from unimodel.service.context import RequestContext
from unimodel.service.pipeline import Call

SECRET = re.compile(r"sk-um-[A-Za-z0-9_-]{43}")


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(keys_cli.keys_app, list(args))
    return result.exit_code, result.stdout, result.stderr


def create(*args: str) -> tuple[str, str]:
    """(secret, the YAML lines under ``keys:``)."""
    code, out, err = invoke("create", *args)
    assert code == 0, err
    secrets_seen = SECRET.findall(out)
    assert len(secrets_seen) == 1  # printed once
    return secrets_seen[0], out[out.index("keys:\n"):]


async def caller_name(cfg: Path, secret: str) -> str:
    settings = Settings.load(cfg)
    stage = ApiKeyAuth(settings.api_keys, settings.keys)

    async def no_body() -> bytes:
        return b""

    call = Call(RequestContext("r"), {"authorization": f"Bearer {secret}"}, no_body)
    try:
        await stage.enter(call)
    finally:
        await stage.aclose()
    assert call.ctx.key_name is not None
    return call.ctx.key_name


async def test_create_then_the_server_accepts_the_key_then_revoke_is_401(tmp_path: Path) -> None:
    secret, lines = create("team-a", "--rpm", "60", "--high-reasoning-rpm", "5", "--routes", "default,hard",
                           "--allowed-tools", "get_weather", "--max-concurrent", "4", "--max-tokens-cap", "2048")
    cfg = tmp_path / "unimodel.yaml"
    cfg.write_text("# the team's gateway\nport: 8100\n" + lines + "routes:\n  hard: {max_tokens: 4096}  # keep\n")
    record = yaml.safe_load(cfg.read_text())["keys"][0]
    assert record["name"] == "team-a" and record["prefix"] == secret[:12]
    assert record["key_hash"].startswith("scrypt$16384$8$1$") and secret not in cfg.read_text()
    assert (record["rpm"], record["high_reasoning_rpm"], record["routes"]) == (60, 5, ["default", "hard"])
    assert (record["allowed_tools"], record["max_concurrent"], record["max_tokens_cap"]) == (["get_weather"], 4, 2048)
    assert await caller_name(cfg, secret) == "team-a"

    before = cfg.read_text()
    code, out, _ = invoke("revoke", "team-a", "--config", str(cfg))
    assert code == 0 and "revoked" in out
    after = cfg.read_text()
    assert after.replace("    revoked: true\n", "", 1) == before  # one line added, nothing else touched
    with pytest.raises(AuthenticationError, match=REVOKED):
        await caller_name(cfg, secret)
    code, out, _ = invoke("revoke", "team-a", "--config", str(cfg))
    assert code == 0 and "already revoked" in out and cfg.read_text() == after


def test_list_shows_names_and_policies_never_hashes(tmp_path: Path) -> None:
    _, lines_a = create("alpha", "--rpm", "10")
    _, lines_b = create("beta", "--routes", "agent")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(lines_a + lines_b.removeprefix("keys:\n"))
    code, out, _ = invoke("list", "--config", str(cfg))
    assert code == 0
    assert "alpha" in out and "rpm=10" in out and "beta" in out and "routes=agent" in out and "active" in out
    for record in yaml.safe_load(cfg.read_text())["keys"]:
        digest = record["key_hash"].rsplit("$", 1)[1]
        salt = record["key_hash"].split("$")[4]
        assert digest not in out and salt not in out
        assert record["prefix"] + "…" in out


def test_revoke_a_flow_style_record_and_a_false_flag(tmp_path: Path) -> None:
    _, lines = create("a")
    record = yaml.safe_load(lines)["keys"][0]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"keys: [{{name: b, key_hash: '{record['key_hash']}'}}, "
                   f"{{name: c, revoked: false, key_hash: '{record['key_hash']}'}}]\n")
    assert invoke("revoke", "b", "--config", str(cfg))[0] == 0
    assert invoke("revoke", "c", "--config", str(cfg))[0] == 0
    assert [k["revoked"] for k in yaml.safe_load(cfg.read_text())["keys"]] == [True, True]


def test_revoke_leaves_a_file_it_cannot_edit_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, lines = create("a")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(lines)
    monkeypatch.setattr(keys_cli, "_with_revoked", lambda text, index: text.replace("name: a", "name: z"))
    code, _, err = invoke("revoke", "a", "--config", str(cfg))
    assert code == 1 and "revoked: true" in err and cfg.read_text() == lines


@pytest.mark.parametrize("args,fragment", [
    (["create", "bad name"], "name"),
    (["create", "key-1"], "reserved"),
    (["create", "a", "--rpm", "-1"], "rpm"),
    (["create", "a", "--routes", "a b"], "routes"),
    (["revoke", "nobody", "--config", "{cfg}"], "no key named"),
    (["list", "--config", "{missing}"], "cannot read"),
    (["create", "taken", "--config", "{cfg}"], "already has"),
    (["create", "new", "--routes", "nope", "--config", "{cfg}"], "'nope' does not exist"),
    (["list", "--config", "{latin1}"], "not UTF-8"),
    (["revoke", "taken", "--config", "{latin1}"], "not UTF-8"),
    (["create", "new", "--config", "{latin1}"], "not UTF-8"),
    (["list", "--config", "{bad_yaml}"], "not valid YAML"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], fragment: str) -> None:
    _, lines = create("taken")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(lines)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(("# café\n" + lines).encode("latin-1"))
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("keys: [1\n")
    args = [a.format(cfg=cfg, missing=tmp_path / "missing.yaml", latin1=latin1, bad_yaml=bad_yaml) for a in args]
    code, out, err = invoke(*args)
    assert code == 2 and fragment in err and err.startswith("unimodel: error: ")
    assert len(err.strip().splitlines()) == 1


def test_keys_is_a_subcommand_of_unimodel() -> None:
    proc = subprocess.run([sys.executable, "-m", "unimodel.cli", "keys", "create", "ci-test"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(SECRET.findall(proc.stdout)) == 1 and "key_hash: scrypt$" in proc.stdout
