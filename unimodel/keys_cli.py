"""``unimodel keys``: make a named API key, list the keys of a config file, revoke one. Nothing else.

``keys create NAME`` prints the secret once and the lines to add to the config file (it writes no file: the
secret must be seen by whoever runs it, and where the config lives — a repository, a secret store — is theirs
to decide). ``keys list --config FILE`` prints each key's name, public prefix, state and policy, never its hash.
``keys revoke NAME --config FILE`` sets ``revoked: true`` on that key in the file itself, by a text edit that
keeps every other byte (comments, order, quoting); the result is parsed again and written only if it says
exactly the same with that one key revoked, else nothing is written and the line to add is printed. A running
server watches the file and reads its keys again within seconds of a change (or at once on SIGHUP:
``server/reload.py``), so a key added or revoked takes effect without a restart.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
import yaml
from pydantic import ValidationError

from unimodel.config_values import read_config_file
from unimodel.errors import ConfigError
from unimodel.gateway.keyhash import hash_key, key_prefix, new_key, parse_hash
from unimodel.gateway.policy import (
    DEFAULT_PRIORITY_CLASS,
    DEFAULT_PRIORITY_CLASSES,
    KeyPolicy,
    RoutePolicy,
    check_key_names,
    check_priority_classes,
    resolve_routes,
)

ERROR_PREFIX = "unimodel: error: "

keys_app = typer.Typer(name="keys", help="Named API keys: create one, list them, revoke one.",
                       no_args_is_help=True, add_completion=False)

_POLICY_FIELDS = ("routes", "rpm", "tpm", "high_reasoning_rpm", "high_reasoning_tpm", "max_concurrent",
                  "max_tokens_cap", "allowed_tools", "priority_class", "priority_classes")


def register(app: typer.Typer) -> None:
    app.add_typer(keys_app, name="keys")


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(ERROR_PREFIX + " ".join(message.split()), err=True)
    raise typer.Exit(code)


def _names(value: Optional[str]) -> Optional[list[str]]:
    if value is None:
        return None
    return [part.strip() for part in value.split(",") if part.strip()]


@keys_app.command()
def create(
    name: str = typer.Argument(..., help="The key's name (letters, digits, ._-): what logs and limits show."),
    rpm: Optional[int] = typer.Option(None, help="Requests per minute (default: the server's --rpm)."),
    tpm: Optional[int] = typer.Option(None, help="Tokens per minute (default: the server's --tpm)."),
    high_reasoning_rpm: Optional[int] = typer.Option(None, help="Requests per minute at high reasoning effort."),
    high_reasoning_tpm: Optional[int] = typer.Option(None, help="Tokens per minute at high reasoning effort."),
    routes: Optional[str] = typer.Option(None, help="Routes it may use, comma-separated (default: all)."),
    allowed_tools: Optional[str] = typer.Option(None, help="Tool names it may send, comma-separated (default: "
                                                           "all the route allows)."),
    max_concurrent: Optional[int] = typer.Option(None, help="Requests in flight at once."),
    max_tokens_cap: Optional[int] = typer.Option(None, help="Largest max_tokens it may ask for."),
    priority_class: Optional[str] = typer.Option(None, help="The priority class of its requests that name none "
                                                            "(default: the server's default class)."),
    priority_classes: Optional[str] = typer.Option(None, help="Priority classes it may name in "
                                                              "X-Unimodel-Priority, comma-separated (default: all)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Check the name and routes against this "
                                                                 "config file (nothing is written to it)."),
) -> None:
    """Make a named key: print its secret (once) and the config lines that hold its hash and policy."""
    secret = new_key()
    fields: dict[str, Any] = {"name": name, "prefix": key_prefix(secret), "key_hash": hash_key(secret)}
    given = {"routes": _names(routes), "rpm": rpm, "tpm": tpm, "high_reasoning_rpm": high_reasoning_rpm,
             "high_reasoning_tpm": high_reasoning_tpm, "max_concurrent": max_concurrent,
             "max_tokens_cap": max_tokens_cap, "allowed_tools": _names(allowed_tools),
             "priority_class": priority_class, "priority_classes": _names(priority_classes)}
    fields.update({k: v for k, v in given.items() if v is not None})
    try:
        record = KeyPolicy.model_validate(fields)
        check_key_names([record])
    except (ValidationError, ValueError) as exc:
        _fail(_why(exc, "key"))
    if config is not None:
        _check_against(config, record)
    typer.echo(f"API key '{name}'. Its secret, shown this once (unimodel keeps only its hash):\n")
    typer.echo(f"    {secret}\n")
    typer.echo("Add to the config file, under `keys:` (a running server picks it up within seconds):\n")
    typer.echo("keys:")
    dumped = record.model_dump(include=set(fields))
    typer.echo(_yaml_item({k: dumped[k] for k in fields}), nl=False)


@keys_app.command("list")
def list_keys(config: Path = typer.Option(..., "--config", help="The YAML config file.")) -> None:
    """Each key of the config file: name, public prefix, state, and policy (never its hash)."""
    _, data = _read(config)
    records = _records(config, data)
    if not records:
        typer.echo(f"no keys in {config}")
        return
    rows = []
    for record in records:
        hashed = parse_hash(record.key_hash)
        policy = []
        for field in _POLICY_FIELDS:
            value = getattr(record, field)
            if value is not None:
                policy.append(f"{field}={','.join(value) if isinstance(value, list) else value}")
        rows.append([record.name, (record.prefix + "…") if record.prefix else "-",
                     "revoked" if record.revoked else "active", f"scrypt(N={hashed.n},r={hashed.r},p={hashed.p})",
                     " ".join(policy) or "-"])
    header = ["NAME", "KEY", "STATE", "HASH", "POLICY"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])


@keys_app.command()
def revoke(
    name: str = typer.Argument(..., help="The key to revoke."),
    config: Path = typer.Option(..., "--config", help="The YAML config file to change."),
) -> None:
    """Set ``revoked: true`` on a key in the config file (every other byte kept); it then answers 401."""
    text, data = _read(config)
    records = _records(config, data)
    index = next((i for i, r in enumerate(records) if r.name == name), None)
    if index is None:
        _fail(f"no key named '{name[:64]}' in {config}")
    if records[index].revoked:
        typer.echo(f"the key '{name}' is already revoked in {config}")
        return
    edited = _with_revoked(text, index)
    expected = data  # parsed from ``text``; used for nothing else from here on
    expected["keys"][index]["revoked"] = True
    if edited is None or _reparsed(edited) != expected:
        typer.echo(f"{config} was left as it is (its layout is not one this command edits); add this line to "
                   f"the key '{name}':\n\n    revoked: true", err=True)
        raise typer.Exit(1)
    _write_atomically(config, edited)
    typer.echo(f"revoked the key '{name}' in {config}; a server reading this file refuses it within seconds "
               "(at once on SIGHUP)")


# ---- helpers ---------------------------------------------------------------------------------------------


def _why(exc: Exception, what: str) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or what
        return f"invalid {what} '{where}': {str(err['msg']).removeprefix('Value error, ')}"
    return str(exc)


def _read(config: Path) -> tuple[str, dict[str, Any]]:
    try:
        return read_config_file(config)
    except ConfigError as exc:
        _fail(str(exc))


def _reparsed(text: str) -> Any:
    """What an edited text says, or ``None`` when the edit broke it (then it is not written)."""
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, TypeError, AttributeError, OverflowError, RecursionError):
        return None


def _records(config: Path, data: dict[str, Any]) -> list[KeyPolicy]:
    raw = data.get("keys") or []
    if not isinstance(raw, list):
        _fail(f"'keys' in {config} must be a list")
    try:
        records = [KeyPolicy.model_validate(item) for item in raw]
        check_key_names(records)
    except (ValidationError, ValueError) as exc:
        _fail(f"{config}: {_why(exc, 'keys')}")
    return records


def _check_against(config: Path, record: KeyPolicy) -> None:
    _, data = _read(config)
    if any(r.name == record.name for r in _records(config, data)):
        _fail(f"{config} already has a key named '{record.name}'")
    try:
        configured = {k: None if v is None else RoutePolicy.model_validate(v)
                      for k, v in (data.get("routes") or {}).items()}
        known = resolve_routes(configured)
    except (ValidationError, ValueError, AttributeError) as exc:
        _fail(f"{config}: {_why(exc, 'routes')}")
    missing = [r for r in record.routes or [] if r not in known]
    if missing:
        _fail(f"the route '{missing[0]}' does not exist in {config} (routes: {', '.join(known)})")
    classes = data.get("priority_classes") or DEFAULT_PRIORITY_CLASSES
    default = data.get("default_priority_class") or DEFAULT_PRIORITY_CLASS
    try:
        check_priority_classes(classes, default, [record])
    except (ValueError, TypeError, AttributeError) as exc:
        _fail(f"{config}: {exc}")


def _yaml_item(fields: dict[str, Any]) -> str:
    """One block-style list item, lists in flow style (``routes: [default, hard]``), values quoted by PyYAML."""
    lines = []
    for i, (key, value) in enumerate(fields.items()):
        flow = yaml.safe_dump(value if isinstance(value, list) else [value], default_flow_style=True,
                              width=10_000).strip()
        lines.append(("  - " if i == 0 else "    ") + f"{key}: {flow if isinstance(value, list) else flow[1:-1]}")
    return "\n".join(lines) + "\n"


def _with_revoked(text: str, index: int) -> Optional[str]:
    """``text`` with ``revoked: true`` set on ``keys[index]`` by a text edit, or ``None`` when the layout is
    not a plain block or flow mapping."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    keys_node = _value(root, "keys")
    if not isinstance(keys_node, yaml.SequenceNode) or index >= len(keys_node.value):
        return None
    item = keys_node.value[index]
    if not isinstance(item, yaml.MappingNode) or not item.value:
        return None
    revoked = _value(item, "revoked")
    if revoked is not None:  # ``revoked: false`` (or another spelling): its value becomes ``true``
        start, end = revoked.start_mark.index, revoked.end_mark.index
        return text[:start] + "true" + text[end:]
    if item.flow_style:  # {name: a, key_hash: ...}: before the closing brace
        end = item.end_mark.index
        if text[end - 1:end] != "}":
            return None
        return text[:end - 1].rstrip() + ", revoked: true" + text[end - 1:]
    first_key, first_value = item.value[0]
    column = first_key.start_mark.column
    line_end = text.find("\n", first_value.end_mark.index)
    if line_end < 0:
        return text + "\n" + " " * column + "revoked: true\n"
    return text[:line_end] + "\n" + " " * column + "revoked: true" + text[line_end:]


def _value(node: Any, key: str) -> Any:
    if not isinstance(node, yaml.MappingNode):
        return None
    for key_node, value_node in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return value_node
    return None


def _write_atomically(path: Path, text: str) -> None:
    """Replace the file ``path`` names with ``text`` at once, keeping its mode. A symlink (a config kept in a
    repository or a mounted volume, linked into place) is followed to its file: the temporary file is written
    beside the target and renamed over it, so the link stays a link and the file the server reads changes."""
    path = Path(path).resolve(strict=True)
    mode = path.stat().st_mode & 0o777
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

