"""Typed configs: frozen dataclasses, loadable from YAML, every field overridable on the CLI.

Precedence: dataclass defaults < `--config FILE.yaml` < command-line flags. The resolved config
is what gets saved beside every output (`to_dict`).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mtmg import logs
from mtmg.errors import InputError

T = TypeVar("T")
VERBOSITY = "verbosity"  # the parsed -v / -q, not a config field


def option(default: Any = dataclasses.MISSING, help: str = "", **kw: Any) -> Any:
    """A dataclass field with a help text for the command line."""
    if isinstance(default, list | dict | set):
        return dataclasses.field(default_factory=lambda: default, metadata={"help": help, **kw})
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _add_field(parser: argparse.ArgumentParser, f: dataclasses.Field, tp: Any) -> None:
    tp, optional = _unwrap_optional(tp)
    meta = dict(f.metadata)
    kw: dict[str, Any] = {"help": meta.get("help", ""), "default": argparse.SUPPRESS}
    if "choices" in meta:
        kw["choices"] = meta["choices"]
    default = f.default if f.default is not dataclasses.MISSING else None
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        default = f.default_factory()  # type: ignore[misc]
    if default is not None and default is not dataclasses.MISSING and tp is not bool:
        kw["help"] += f" (default: {default})"
    flag = "--" + f.name.replace("_", "-")
    if meta.get("positional"):
        kw.pop("default")
        parser.add_argument(f.name, type=tp, metavar=f.name.upper(), **kw)
    elif tp is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
    elif typing.get_origin(tp) in (tuple, list):
        inner = typing.get_args(tp)[0]
        # a repeated flag adds to the list (`--supported A --supported B`), as `--supported A B`
        parser.add_argument(
            flag, type=inner, nargs="+", action="extend", metavar=f.name.upper(), **kw
        )
    else:
        metavar = None if "choices" in meta else meta.get("metavar", f.name.upper())
        parser.add_argument(flag, type=_none_or(tp) if optional else tp, metavar=metavar, **kw)


def _none_or(tp: Any) -> Any:
    def parse(s: str) -> Any:
        return None if s.lower() in ("none", "null") else tp(s)

    parse.__name__ = getattr(tp, "__name__", "value")
    return parse


def build_parser(cls: type, description: str, epilog: str = "") -> argparse.ArgumentParser:
    """An argparse parser with one flag per dataclass field plus `--config FILE.yaml`."""
    parser = argparse.ArgumentParser(
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        _add_field(parser, f, hints[f.name])
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE.yaml",
        default=None,
        help="YAML file of option values (keys as the long options, with _ or -); "
        "flags given on the command line override it",
    )
    logs.add_flags(parser)
    return parser


def load_yaml(cls: type[T], path: str | Path, flag: str | None = None) -> dict[str, Any]:
    """Field values from a YAML file (given as option `flag`, if any); a file that cannot be
    read, is not YAML or has unknown keys is an InputError that names the file and key."""
    where = f"{flag} {path}" if flag else str(path)
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except OSError as e:
        raise InputError(f"{where}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise InputError(f"{where}: cannot read it (not a text file)") from None
    except yaml.YAMLError as e:
        raise InputError(f"{where}: not valid YAML ({_yaml_problem(e)})") from None
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a mapping of option names to values")
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            raise InputError(f"{where}: unknown option {key!r}; known: {sorted(names)}")
        out[name] = value
    return out


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error on one line: where in the file, and what."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or " ".join(str(err).split())
    return f"line {mark.line + 1}: {problem}" if mark else problem


def from_args(cls: type[T], ns: argparse.Namespace) -> T:
    """Resolve defaults < YAML (`ns.config`) < flags given, into a `cls` instance; a parsed
    command line also sets how much the command prints (`-v`, `-q`: `mtmg.logs`)."""
    values: dict[str, Any] = {}
    if getattr(ns, "config", None):
        values.update(load_yaml(cls, ns.config, "--config"))
    if hasattr(ns, VERBOSITY):
        logs.setup(getattr(ns, VERBOSITY) or 0)
    given = {k: v for k, v in vars(ns).items() if k not in ("config", VERBOSITY)}
    values.update(given)
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        and f.name not in values
    ]
    if required:
        flags = ", ".join("--" + n.replace("_", "-") for n in required)
        raise ValueError(f"missing required option(s): {flags}")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(hints[f.name])
        if typing.get_origin(tp) is tuple and isinstance(values.get(f.name), list):
            values[f.name] = tuple(values[f.name])
    return cls(**values)


def parse(cls: type[T], argv: Sequence[str] | None, description: str, epilog: str = "") -> T:
    parser = build_parser(cls, description, epilog)
    ns = parser.parse_args(argv)
    try:
        return from_args(cls, ns)
    except (TypeError, ValueError) as e:
        parser.error(str(e))
        raise  # unreachable: parser.error exits


def to_dict(cfg: Any) -> dict[str, Any]:
    """The resolved config as plain data (tuples become lists) for JSON/YAML."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
