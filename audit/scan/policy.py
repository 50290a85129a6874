"""The scan policy: what `audit scan` does with each model, from a TOML file.

Top-level keys apply to every model; each ``[[models]]`` table applies to the models its
``glob`` matches, later tables over earlier ones::

    data = "clean/"                 # clean labelled images (any format `audit` reads)
    anomaly_threshold = 1.75        # the default; 2.0 with confirm = false

    [[models]]
    glob = "mnist/*.onnx"           # fnmatch; `*` crosses folders; no "/": the file name
    scale = 0.00392156862745098
    mean = 0.5
    std = 0.5

    [[models.watermarks]]
    triggers = "wm/content/"        # the trigger set; its labels are the watermark labels
    vanilla = "vanilla/mnist.onnx"  # or a list of clean models (the highest rate counts),
                                    # or null_rate = 0.1
    expect = "demonstrated"         # the gate fails when ownership is not demonstrated

A glob is matched against the model's path relative to the policy file's folder (its absolute
path when it lies outside). Relative paths in the file are relative to that folder. Unknown
keys and bad values are refused with one line naming the file and the key.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:   # Python 3.10
    import tomli as tomllib

from audit.data import Preprocess
from audit.errors import AuditError, DataError
from audit.settings import DetectConfig, NCConfig

FAIL_ON = ("suspected", "error", "never")
EXPECT = ("demonstrated", "report")


class PolicyError(AuditError):
    """A policy file that cannot be used."""


@dataclass(frozen=True)
class Watermark:
    """A watermark to verify: its trigger set and the vanilla rate to test against."""

    triggers: str
    vanilla: str | tuple[str, ...] | None = None     # several: the highest rate is the null
    null_rate: float | None = None
    alpha: float = 0.01
    expect: str = "demonstrated"


@dataclass(frozen=True)
class ModelPolicy:
    """What applies to one model: the defaults, then every matching [[models]] table."""

    data: str | None = None
    scale: float | None = None
    mean: float | tuple[float, ...] | None = None
    std: float | tuple[float, ...] | None = None
    input_spec: str | None = None
    anomaly_threshold: float | None = None   # settings.detect_threshold
    max_images: int = DetectConfig.max_images
    seed: int = DetectConfig.seed
    nc_epochs: int = NCConfig.epochs
    confirm: bool = True
    fail_on: str = "suspected"
    watermarks: tuple[Watermark, ...] = field(default_factory=tuple)

    def preprocess(self) -> Preprocess:
        return Preprocess.from_options(self.scale, self.mean, self.std, self.input_spec)

    def to_dict(self) -> dict:
        return asdict(self)

    def key(self) -> str:
        """A digest of everything that decides a model's result (with the model's sha256, the
        key under which --resume finds a result again); fail_on only gates it."""
        settings = {k: v for k, v in self.to_dict().items() if k != "fail_on"}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


#: key -> (check, what it must be); the checks return the normalised value or raise ValueError
def _number(lo=None, hi=None, lo_open=False, integer=False):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            raise ValueError
        if not math.isfinite(v) or (lo is not None and (v < lo or (lo_open and v == lo))) \
                or (hi is not None and v > hi):
            raise ValueError
        return v
    return check


def _text(v):
    if not isinstance(v, str) or not v:
        raise ValueError
    return v


def _texts(v):
    if isinstance(v, list):
        if not v:
            raise ValueError
        return tuple(_text(x) for x in v)
    return _text(v)


def _numbers(v):
    if isinstance(v, list):
        if not v:
            raise ValueError
        return tuple(_number()(x) for x in v)
    return _number()(v)


def _choice(options):
    def check(v):
        if v not in options:
            raise ValueError
        return v
    return check


def _flag(v):
    if not isinstance(v, bool):
        raise ValueError
    return v


MODEL_KEYS = {
    "data": (_text, "a path"),
    "scale": (_number(0, lo_open=True), "a positive number"),
    "mean": (_numbers, "a number or a list of numbers"),
    "std": (_numbers, "a number or a list of numbers"),
    "input_spec": (_text, "a path"),
    "anomaly_threshold": (_number(0, lo_open=True), "a positive number"),
    "max_images": (_number(0, integer=True), "an integer >= 0"),
    "seed": (_number(0, 2 ** 32 - 1, integer=True), "an integer >= 0"),
    "nc_epochs": (_number(1, integer=True), "an integer >= 1"),
    "confirm": (_flag, "true or false"),
    "fail_on": (_choice(FAIL_ON), " or ".join(FAIL_ON)),
}
WATERMARK_KEYS = {
    "triggers": (_text, "a path"),
    "vanilla": (_texts, "a path or a list of paths"),
    "null_rate": (_number(0, 1), "a number in [0, 1]"),
    "alpha": (_number(0, 1, lo_open=True), "a number in (0, 1]"),
    "expect": (_choice(EXPECT), " or ".join(EXPECT)),
}
PATH_KEYS = ("data", "input_spec", "triggers", "vanilla")


@dataclass(frozen=True)
class Policy:
    """A parsed policy file (or the empty policy): the top-level settings and the
    [[models]] tables in order."""

    base: dict = field(default_factory=dict)
    rules: tuple[tuple[str, dict], ...] = ()
    source: str | None = None
    root: Path | None = None
    sha256: str | None = None

    def for_model(self, path: Path, defaults: dict | None = None) -> ModelPolicy:
        """The settings of one model: defaults (the command line's --data), the top level,
        then each matching [[models]] table."""
        values = {k: v for k, v in (defaults or {}).items() if v is not None}
        values.update(self.base)
        for glob, keys in self.rules:
            if self.matches(glob, path):
                values.update(keys)
        return replace(ModelPolicy(), **values)

    def matches(self, glob: str, path: Path) -> bool:
        p = Path(path).resolve()
        if "/" not in glob:
            return fnmatch.fnmatchcase(p.name, glob)
        rel = p
        if self.root is not None:
            try:
                rel = p.relative_to(self.root)
            except ValueError:
                pass
        return fnmatch.fnmatchcase(rel.as_posix(), glob)


def load_policy(path: str | None) -> Policy:
    """Read and validate a policy file; None gives the empty policy."""
    if path is None:
        return Policy()
    p = Path(path)
    try:
        raw = p.read_bytes()
        doc = tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise PolicyError(f"{path}: no such policy file") from None
    except IsADirectoryError:
        raise PolicyError(f"{path}: is a folder, not a policy file") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: not a TOML file (not UTF-8 text)") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy file: {exc.strerror or exc}") from None
    root = p.resolve().parent
    rules_raw = doc.pop("models", [])
    base = _model_keys(doc, root, f"{path}", "the top level")
    if not isinstance(rules_raw, list) or not all(isinstance(t, dict) for t in rules_raw):
        raise PolicyError(f"{path}: 'models' must be [[models]] tables")
    rules = []
    for i, table in enumerate(rules_raw, start=1):
        table = dict(table)
        where = f"[[models]] table {i}"
        glob = table.pop("glob", None)
        if not isinstance(glob, str) or not glob:
            raise PolicyError(f"{path}: {where} needs a glob (a non-empty string)")
        rules.append((glob, _model_keys(table, root, f"{path}", where)))
    return Policy(base=base, rules=tuple(rules), source=str(path), root=root,
                  sha256=hashlib.sha256(raw).hexdigest())


def _model_keys(table: dict, root: Path, path: str, where: str) -> dict:
    wms = table.pop("watermarks", None)
    out = _checked(table, MODEL_KEYS, root, path, where)
    if wms is not None:
        if not isinstance(wms, list) or not all(isinstance(w, dict) for w in wms):
            raise PolicyError(f"{path}: {where}: 'watermarks' must be [[watermarks]] tables")
        marks = []
        for j, w in enumerate(wms, start=1):
            sub = f"{where}, watermark {j}"
            keys = _checked(dict(w), WATERMARK_KEYS, root, path, sub)
            if "triggers" not in keys:
                raise PolicyError(f"{path}: {sub} needs triggers (the trigger set)")
            if "vanilla" in keys and "null_rate" in keys:
                raise PolicyError(f"{path}: {sub}: give either vanilla or null_rate, not both")
            marks.append(Watermark(**keys))
        out["watermarks"] = tuple(marks)
    return out


def _checked(table: dict, known: dict, root: Path, path: str, where: str) -> dict:
    out = {}
    for key, value in table.items():
        if key not in known:
            near = difflib.get_close_matches(key, [*known, "watermarks", "glob"], n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise PolicyError(f"{path}: {where}: unknown key {key!r}{hint}")
        check, what = known[key]
        try:
            value = check(value)
        except ValueError:
            raise PolicyError(f"{path}: {where}: {key} must be {what}, got {value!r}") from None
        if key in PATH_KEYS:
            value = tuple(str(root / v) for v in value) if isinstance(value, tuple) \
                else str(root / value)
        out[key] = value
    if "scale" in out or "mean" in out or "std" in out:
        try:
            Preprocess.from_options(out.get("scale"), out.get("mean"), out.get("std"), None)
        except DataError as exc:
            raise PolicyError(f"{path}: {where}: {exc}") from None
    return out

