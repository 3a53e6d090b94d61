"""``unimodel serve``'s flags, generated from :class:`~unimodel.config.Settings`: one flag per setting.

A field says how it appears in ``unimodel serve --help``: its ``description`` is the help text, and its
``json_schema_extra`` (``config._cli``) names the help panel and, where it is not ``--field-name``, the flag.
The flag takes what a user would type:

* a number, a word, a path or one of a few choices: one value (``--port 8001``, ``--engine upstream``);
* a boolean: ``--x`` / ``--no-x``;
* a list of words: the flag repeated (``--api-key a --api-key b``);
* a structured setting (a mapping, a model, a list of models): one JSON or YAML flow value
  (``--reasoning '{"default_effort": "high"}'``).

A flag not given is ``None``, so :meth:`Settings.load` keeps its precedence (flags > ``UNIMODEL_*`` > file >
defaults). Typer reads a command's parameters from ``inspect.signature``: :func:`settings_options` gives the
command a ``__signature__`` whose parameters' defaults are ``typer.Option`` objects. A CLI-layer module: nothing
below the server and the CLI imports it.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, List, Literal, Optional, TypeVar, Union, get_args, get_origin

import typer
import yaml
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from unimodel.config import Settings

# config.Panel -> the panel's title, in the order --help lists them
PANELS = {
    "engine": "Engine",
    "local": "Local engine",
    "vllm": "vLLM engine",
    "upstream": "Upstream engine",
    "pool": "Upstream pool: replicas, load, queue",
    "gateway": "Gateway: keys, routes, priorities",
    "requests": "Requests: limits on a request, images",
    "resilience": "Resilience: retries, timeouts, breakers, fallback",
    "idempotency": "Redis and idempotency keys",
    "limits": "Rate limits and quotas",
    "responses": "Responses API: stored responses, encrypted reasoning",
    "telemetry": "Request log",
    "monitoring": "Monitoring: metrics, dashboard, alerts",
    "http": "HTTP: hosts, origins, connections",
    "server": "Server: address, processes, shutdown",
}
MAX_PANEL_FLAGS = 15  # no panel longer (tests/unit/test_serve_help.py): a panel is one subject, one screen

_ONE_VALUE = (str, int, float, Path)

F = TypeVar("F", bound=Callable[..., Any])


class FlagError(TypeError):
    """A setting that cannot be turned into a flag: no description or panel, or a type :func:`parameter` does
    not know (teach it the type, or give the setting a structured type)."""


def flag_name(name: str, field: FieldInfo) -> str:
    """The setting's flag: the one its field declares, else ``--field-name``."""
    return str(_extra(field).get("flag") or "--" + name.replace("_", "-"))


def parameter(name: str, field: FieldInfo) -> inspect.Parameter:
    """The command parameter of one setting: its type as typed on the command line, and its ``typer.Option``."""
    if not field.description:
        raise FlagError(f"the setting '{name}' has no description (its --help text)")
    panel = _extra(field).get("panel")
    if panel not in PANELS:
        raise FlagError(f"the setting '{name}' names no --help panel of {', '.join(PANELS)}")
    flag = flag_name(name, field)
    if not flag.startswith("--") or flag[2:] != flag[2:].strip("-") or not flag[2:]:
        raise FlagError(f"the setting '{name}' declares the flag {flag!r}: a flag is --name")
    kind = _without_none(field.annotation)
    help_text = field.description
    options: dict[str, Any] = {"rich_help_panel": PANELS[panel], "show_default": _default_text(field, flag)}
    decls = [flag]
    annotation: Any
    if kind is bool:
        decls = [f"{flag}/--no-{flag[2:]}"]
        annotation = Optional[bool]
    elif kind is SecretStr:
        annotation = Optional[str]
        help_text += f" Prefer UNIMODEL_{name.upper()}: a flag shows in the process list."
    elif kind in _ONE_VALUE or get_origin(kind) is Literal:
        annotation = Optional[kind]
    elif get_origin(kind) is list and get_args(kind)[0] in _ONE_VALUE:
        item = get_args(kind)[0]
        annotation = Optional[List[item]]  # type: ignore[valid-type]
        options["metavar"] = f"<{item.__name__.lower()}>"  # typer's own would be <list[str]>
        help_text += " Repeatable."
    elif (shape := _structured(kind)) is not None:
        annotation = Optional[str]
        options.update(metavar="JSON", parser=_structured_parser(shape))
    else:
        raise FlagError(f"the setting '{name}' has a type no flag takes: {field.annotation!r}")
    option = typer.Option(None, *decls, help=help_text, **options)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)


def parameters() -> list[inspect.Parameter]:
    """One parameter per setting, panel by panel in :data:`PANELS`' order, fields in their order within one."""
    titles = list(PANELS.values())
    made = [parameter(name, field) for name, field in Settings.model_fields.items()]
    return sorted(made, key=lambda p: titles.index(p.default.rich_help_panel))


def settings_options(command: F) -> F:
    """Give ``command(its own parameters, **settings)`` one typer option per setting after its own parameters;
    typer then passes each setting by its field name (``None`` where the flag was not given)."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.kind is not p.VAR_KEYWORD]
    clash = sorted({p.name for p in own} & set(Settings.model_fields))
    if clash:
        raise FlagError(f"the command's own parameter '{clash[0]}' is also a setting")
    command.__signature__ = inspect.Signature([*own, *parameters()])  # type: ignore[attr-defined]
    return command


def _structured_parser(shape: type) -> Callable[[Any], Any]:
    """A structured flag's parser: JSON or a YAML flow value, of the setting's shape (an object or an array; what
    is inside is the settings' to check). Anything else is a usage error that names the flag."""

    def parse(text: Any) -> Any:
        if not isinstance(text, str):
            return text
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at column {mark.column + 1}" if mark is not None else ""
            raise typer.BadParameter(f"not JSON: {getattr(exc, 'problem', None) or exc}{where}") from exc
        except (RecursionError, ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise typer.BadParameter(f"not JSON: {exc}") from exc
        if not isinstance(value, shape):
            example = "object, e.g. {...}" if shape is dict else "array, e.g. [{...}]"
            raise typer.BadParameter(f"must be a JSON {example}")
        return value

    return parse


def _structured(kind: Any) -> Optional[type]:
    """``dict`` or ``list``: the JSON shape of a structured setting; ``None`` for any other type."""
    if get_origin(kind) is dict or (isinstance(kind, type) and issubclass(kind, BaseModel)):
        return dict
    if get_origin(kind) is list:
        return list
    return None


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) is Union:
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _default_text(field: FieldInfo, flag: str) -> Union[bool, str]:
    """What ``--help`` shows as the default: the setting's own (the option's is ``None``); nothing for none or an
    empty or structured one."""
    default = field.default
    if field.default_factory is not None or default is None:
        return False
    if isinstance(default, bool):
        return flag[2:] if default else f"no-{flag[2:]}"
    return str(default)


def _extra(field: FieldInfo) -> dict[str, Any]:
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
