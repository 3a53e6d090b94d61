"""The values the settings are read from and checked with: the YAML config file, and the shapes of URLs, host
names, origins and shell-style commands. Split from ``config.py`` (the settings model itself) so that each
stays one job."""

from __future__ import annotations

import ipaddress
import shlex
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import yaml

from unimodel.errors import ConfigError


class ConfigFile(NamedTuple):
    """A YAML config file as read: its text (``unimodel keys revoke`` edits it) and the mapping it holds."""

    text: str
    values: dict[str, Any]


def read_config_file(path: Path) -> ConfigFile:
    """Read and parse a YAML config file; every way it can be unusable is a :class:`ConfigError` that names it.

    The one reader of the file for :meth:`Settings.load` (``serve``, ``logs``) and ``unimodel keys``: a file
    that cannot be read, is not UTF-8, is not YAML (PyYAML's constructors raise plain ``ValueError`` and
    friends for values such as ``2001-13-45`` or ``!!int x``), or is not a mapping of named settings.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from exc
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(f"config file {path} is nested too deeply") from exc
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise ConfigError(f"config file {path} holds a value YAML cannot read: {exc}") from exc
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings")
    odd = next((k for k in values if not isinstance(k, str)), None)
    if odd is not None:
        raise ConfigError(f"config file {path}: setting names are text, not {repr(odd)[:60]}")
    return ConfigFile(text, values)


def shell_words(v: str) -> list[str]:
    """A command given as one string, split like a POSIX shell would (``--vllm-command``); never empty."""
    try:
        words = shlex.split(v)
    except ValueError as exc:  # an unclosed quote, a lone backslash at the end
        raise ValueError(f"not a shell-style command ({exc})") from exc
    if not words:
        raise ValueError("empty: name the command, e.g. 'vllm serve'")
    return words


#: the ``--upstream`` forms that name a pool's replicas by a lookup (``engines/pool/discovery.py`` reads them)
DISCOVERY_SCHEMES = ("dns://", "dns+srv://", "k8s://")


def pool_file_values(pool: Any) -> dict[str, Any]:
    """The config file's ``pool:`` mapping as the flat settings it stands for: ``upstreams`` is ``upstream``
    (the replicas), every other key ``pool_<key>`` (``policy`` → ``pool_policy``)."""
    if not isinstance(pool, dict):
        raise ConfigError("the config file's pool: must be a mapping, e.g. pool: {upstreams: [http://a:8000/v1, "
                          "http://b:8000/v1], policy: balanced}")
    out: dict[str, Any] = {}
    for key, value in pool.items():
        name = str(key).replace("-", "_")
        out["upstream" if name == "upstreams" else f"pool_{name}"] = value
    return out


def _http_url(v: str) -> str:
    if not v.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL, e.g. http://gpu-box:8000/v1")
    return v.rstrip("/")


def host_pattern(v: str) -> str:
    """An ``--allowed-hosts`` entry (or ``--host``) as the Host check compares it: lower case, no trailing dot,
    an IPv6 address in brackets; ``*`` (any) and ``*.example.com`` (its subdomains) kept as they are."""
    v = v.strip().lower().rstrip(".")
    if v == "*":
        return v
    name = v[2:] if v.startswith("*.") else v
    try:
        return f"[{ipaddress.IPv6Address(name.strip('[]'))}]"
    except ValueError:
        pass
    if not name or not all(c.isalnum() or c in "-._" for c in name):
        raise ValueError(f"a host name or address, without scheme, port or path, e.g. api.example.com: {v!r}")
    return v


def origin_pattern(v: str) -> str:
    """A ``--cors-origins`` entry as browsers send ``Origin``: ``scheme://host[:port]``, lower case, no default
    port, no path; or ``*``."""
    v = v.strip().rstrip("/")
    if v == "*":
        return v
    parts = urlsplit(v.lower())
    try:
        port = parts.port
    except ValueError:
        port = -1
    if not parts.scheme or not parts.hostname or port == -1 or parts.path or parts.query or parts.fragment \
            or parts.username is not None or parts.password is not None:
        raise ValueError(f"an origin is scheme://host[:port], e.g. https://app.example.com: {v!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return f"{parts.scheme}://{host}" if port is None or port == default else f"{parts.scheme}://{host}:{port}"
