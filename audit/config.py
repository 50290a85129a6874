"""CLI options and TOML files from the settings dataclasses (audit.settings).

config_option(LaunderConfig, "retrain.epochs", "--epochs") is a click option whose default, help,
type and range are the field's; the command reads the options given on its command line with
explicit_settings(ctx). load_config(LaunderConfig, path) reads `--config FILE.toml`, whose keys
are the dataclass fields (nested dataclasses are tables, `[nc]`, `[retrain]`), and refuses
an unknown key, a wrong type or an out-of-range value with one AuditError line.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from pathlib import Path

import click
from click.core import ParameterSource

try:
    import tomllib
except ModuleNotFoundError:   # Python 3.10
    import tomli as tomllib

from audit.errors import AuditError
from audit.settings import RETIRED


def _fields(cls) -> dict[str, tuple[dataclasses.Field, object]]:
    """name -> (field, resolved type) of a settings dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def _nested(tp) -> type | None:
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _optional(tp):
    """X for X | None, else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return None


def resolve(cls, path: str) -> tuple[dataclasses.Field, object]:
    """The field (and its type) at a dotted path: "rounds", "nc.epochs"."""
    head, _, tail = path.partition(".")
    f, tp = _fields(cls)[head]
    return resolve(_nested(tp), tail) if tail else (f, tp)


def default(cls, path: str):
    """The default value of the field at path."""
    obj = cls()
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _range_text(meta: dict) -> str:
    lo, hi = meta.get("min"), meta.get("max")
    left = f"{'>' if meta.get('min_open') else '>='} {lo}" if lo is not None else ""
    right = f"{'<' if meta.get('max_open') else '<='} {hi}" if hi is not None else ""
    return " and ".join(t for t in (left, right) if t)


def _in_range(v, meta: dict) -> bool:
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and (v < lo or (meta.get("min_open") and v == lo)):
        return False
    return hi is None or not (v > hi or (meta.get("max_open") and v == hi))


# ------------------------------------------------------------------------------------------
# click options


class _SettingType(click.ParamType):
    """A field's values on the command line: its type and range, and the word for None."""

    def __init__(self, tp, meta: dict) -> None:
        self.tp, self.meta = tp, meta
        inner = _optional(tp) or tp
        none = f"{meta['none']}|" if "none" in meta else ""
        self.name = none + {int: "integer", float: "number", str: "text"}.get(inner, "value")

    def convert(self, value, param, ctx):
        try:
            if isinstance(value, str):
                value = _parse_text(value, self.tp, self.meta)
            return _check(value, self.tp, self.meta)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _parse_text(text: str, tp, meta: dict):
    """A command-line word as a value of type tp (before the range check)."""
    if "none" in meta and text.strip().lower() == meta["none"]:
        return None
    inner = _optional(tp) or tp
    try:
        if inner is int:
            return int(text)
        if inner is float:
            return float(text)
    except ValueError:
        word = "an integer" if inner is int else "a number"
        extra = f" or {meta['none']}" if "none" in meta else ""
        raise ValueError(f"{text!r} is not {word}{extra}") from None
    return text


class SettingOption(click.Option):
    """A click option that sets one settings field (its dotted path)."""

    def __init__(self, *args, setting: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.setting = setting


def config_option(cls, path: str, *decls: str, **overrides):
    """A click option for the field at path of settings class cls: default, help and type
    (with its range and choices) are the field's. overrides go to click.option (hidden=True...)."""
    f, tp = resolve(cls, path)
    meta = dict(f.metadata)
    value = default(cls, path)
    kw: dict = {"help": meta.get("help"), "show_default": True, "cls": SettingOption,
                "setting": path}
    if tp is bool:
        kw.update(default=value, is_flag=True)
    elif "choices" in meta:
        kw.update(type=click.Choice(list(meta["choices"])), default=value)
    elif tp in (int, float):
        from audit.cli import FiniteFloat

        bounds = {k: meta.get(k) for k in ("min", "max")}
        bounds.update({k: meta.get(k, False) for k in ("min_open", "max_open")})
        kw.update(type=click.IntRange(**bounds) if tp is int else FiniteFloat(**bounds),
                  default=value)
    else:
        kw.update(type=_SettingType(tp, meta),
                  default=meta["none"] if value is None and "none" in meta else value)
    kw.update(overrides)
    return click.option(*decls, **kw)


def explicit_settings(ctx: click.Context) -> dict[str, object]:
    """setting path -> value of every SettingOption given on the command line (or from the
    environment), not left at its default."""
    out = {}
    for p in ctx.command.params:
        if isinstance(p, SettingOption) and ctx.get_parameter_source(p.name) in (
                ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            out[p.setting] = ctx.params[p.name]
    return out


def with_settings(cfg, values: dict[str, object]):
    """cfg with the dotted paths in values set (dataclasses.replace, nested as needed)."""
    changes: dict[str, dict] = {}
    top = {}
    for path, value in values.items():
        head, _, tail = path.partition(".")
        if tail:
            changes.setdefault(head, {})[tail] = value
        else:
            top[head] = value
    for head, sub in changes.items():
        top[head] = with_settings(top.get(head, getattr(cfg, head)), sub)
    return dataclasses.replace(cfg, **top)


# ------------------------------------------------------------------------------------------
# TOML files


def _type_name(v) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "an array", dict: "a table"}.get(type(v), type(v).__name__)


def _check(v, tp, meta: dict):
    """v (as TOML or the command line gives it) as a value of type tp within the field's range
    and choices; ValueError (one line) when it is not."""
    inner = _optional(tp)
    if inner is not None:
        if v is None:
            return None
        if "none" in meta and isinstance(v, str) and v.strip().lower() == meta["none"]:
            return None
        try:
            return _check(v, inner, meta)
        except ValueError as exc:
            if "none" in meta and str(exc).startswith("expected"):
                msg = str(exc).replace(", got ", f" or \"{meta['none']}\", got ", 1)
                raise ValueError(msg) from None
            raise
    if tp is bool:
        if not isinstance(v, bool):
            raise ValueError(f"expected true or false, got {_type_name(v)} ({v!r})")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected an integer, got {_type_name(v)} ({v!r})")
    elif tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"expected a number, got {_type_name(v)} ({v!r})")
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"{v!r} is not a finite number")
    elif tp is str:
        if not isinstance(v, str):
            raise ValueError(f"expected a string, got {_type_name(v)} ({v!r})")
        if "choices" in meta and v not in meta["choices"]:
            raise ValueError(f"{v!r} is not one of {', '.join(meta['choices'])}")
        return v
    elif typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if not isinstance(v, (list, tuple)) or len(v) != len(args):
            raise ValueError(f"expected an array of {len(args)} numbers, got {_type_name(v)} "
                             f"({v!r})")
        return tuple(_check(x, a, meta) for x, a in zip(v, args))
    if not _in_range(v, meta):
        raise ValueError(f"{v!r} is out of range (must be {_range_text(meta)})")
    return v


def _check_retired(name: str, value, where: str) -> None:
    """A former setting named in a TOML file: accepted at the value it is fixed at."""
    fixed = RETIRED[name]
    fixed = list(fixed) if isinstance(fixed, tuple) else fixed     # as TOML writes it
    # numbers compare by value (2 == 2.0); a boolean only equals a boolean
    if value != fixed or isinstance(value, bool) != isinstance(fixed, bool):
        raise AuditError(f"{where}: {name} is no longer a setting: it is fixed at "
                         f"{json.dumps(fixed)} (docs/method.md, Constants)")


def _read(cls, table: dict, prefix: str, where: str) -> dict[str, object]:
    """Dotted path -> checked value of every key of table (a cls table)."""
    known = _fields(cls)
    out: dict[str, object] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if key not in known and name in RETIRED:
            _check_retired(name, value, where)
            continue
        if key not in known:
            keys = [f"{prefix}{k}" for k in known]
            close = difflib.get_close_matches(name, keys, n=3, cutoff=0.6)
            hint = (f"did you mean {' or '.join(close)}?" if close
                    else f"keys here: {', '.join(keys)}")
            raise AuditError(f"{where}: unknown key {name!r}; {hint}")
        f, tp = known[key]
        sub = _nested(tp)
        if sub is not None:
            if not isinstance(value, dict):
                raise AuditError(f"{where}: {name} must be a table ([{name}]), got "
                                 f"{_type_name(value)}")
            out.update(_read(sub, value, f"{name}.", where))
            continue
        if isinstance(value, dict):
            raise AuditError(f"{where}: {name} is a value, not a table")
        try:
            out[name] = _check(value, tp, dict(f.metadata))
        except ValueError as exc:
            raise AuditError(f"{where}: {name}: {exc}") from None
    return out


def read_config(cls, path) -> dict[str, object]:
    """The settings a TOML file gives, as dotted path -> checked value."""
    where = f"--config {path}"
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise AuditError(f"{where}: cannot read it: {reason}") from None
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AuditError(f"{where}: not valid TOML: {exc}") from None
    return read_table(cls, table, where)


def read_table(cls, table: dict, where: str) -> dict[str, object]:
    """The settings a table as a TOML file holds it gives (nested tables for [nc], [retrain]),
    as dotted path -> checked value; where names the source in the one-line AuditError."""
    return _read(cls, table, "", where)


def load_config(cls, path, base=None):
    """base (default cls()) with the settings of the TOML file at path."""
    return with_settings(base if base is not None else cls(), read_config(cls, path))


def toml_keys(cls, prefix: str = "") -> list[str]:
    """Every dotted key a TOML file of cls may set."""
    out = []
    for name, (_, tp) in _fields(cls).items():
        sub = _nested(tp)
        out += toml_keys(sub, f"{prefix}{name}.") if sub else [f"{prefix}{name}"]
    return out
