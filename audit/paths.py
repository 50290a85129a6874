"""Output paths checked against input paths before any work starts.

Every command names the files and folders it will write (:class:`Output`) and every file or
folder it reads; :func:`check_outputs` refuses, with one line, an output that would write over
an input (through any symbolic link or hard link), an output inside an input folder, an output
folder holding an input where the tool writes, two outputs that collide, and an output that
cannot be created (a parent that is a regular file, a folder that is not writable).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from audit.errors import AuditError

PathLike = str | os.PathLike

#: What `audit launder --report` and `audit detect --report` write inside their folder.
LAUNDER_REPORT = ("report.json", "round_*")
DETECT_REPORT = ("report.json", "mask_*.png", "pattern_*.png", "trigger_*.png", "stamped_*.png")


@dataclass(frozen=True)
class Output:
    """A path the tool writes: a file, or a folder.

    ``writes`` names (as glob patterns) the entries the tool writes directly inside a folder,
    everything below them included; ``None`` means anything inside the folder may be written.
    """

    path: Path
    folder: bool = False
    writes: tuple[str, ...] | None = None
    what: str = "output"


def output_file(path: PathLike, what: str = "output") -> Output:
    return Output(Path(path), folder=False, what=what)


def output_folder(path: PathLike, writes: tuple[str, ...] | None = None,
                  what: str = "output folder") -> Output:
    return Output(Path(path), folder=True, writes=writes, what=what)


def model_inputs(path: PathLike | None) -> list[Path]:
    """An ONNX file and the external-data files it names (when it parses; loading reports why not)."""
    if path is None:
        return []
    p = Path(path)
    out = [p]
    if not p.is_file():
        return out
    try:
        import onnx

        model = onnx.load(str(p), load_external_data=False)
        for init in model.graph.initializer:
            if init.data_location != onnx.TensorProto.EXTERNAL:
                continue
            for entry in init.external_data:
                if entry.key == "location" and isinstance(entry.value, str) and entry.value:
                    f = p.parent / entry.value
                    if f not in out:
                        out.append(f)
    except Exception:  # an unreadable model is reported by the loader, with its own message
        pass
    return out


def model_has_external_data(path: PathLike | None) -> bool:
    return len(model_inputs(path)) > 1


def data_inputs(path: PathLike | None) -> list[Path]:
    """A data set path and, for MNIST IDX images, the labels file read beside it."""
    if path is None:
        return []
    p = Path(path)
    out = [p]
    name = p.name.removesuffix(".gz")
    for image_tag, label_tag in (("images-idx3", "labels-idx1"), ("images.idx3", "labels.idx1")):
        if image_tag in name:
            base = name.replace(image_tag, label_tag)
            out += [p.with_name(base), p.with_name(base + ".gz")]
    return out


def _real(p: Path) -> Path:
    return Path(os.path.realpath(p))


def _inside(child: Path, parent: Path) -> bool:
    return child != parent and parent in child.parents


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _written(folder: Output, real_folder: Path, real_target: Path) -> bool:
    """Whether the tool writes real_target (or something holding it) inside folder."""
    if not _inside(real_target, real_folder):
        return False
    first = real_target.relative_to(real_folder).parts[0]
    return folder.writes is None or any(fnmatch.fnmatchcase(first, pat) for pat in folder.writes)


def _conflict(out: Output, real_out: Path, src: Path, real_src: Path, src_is_dir: bool) -> str | None:
    if real_out == real_src or _same(out.path, src):
        return f"refusing to overwrite the input {src}"
    if src_is_dir and _inside(real_out, real_src):
        return f"refusing to write inside the input folder {src}"
    if out.folder and _written(out, real_out, real_src):
        return f"refusing to overwrite the input {src}, which the {out.what} would write over"
    return None


def _check_creatable(out: Output) -> None:
    """The output can be written: its parent is (or can be made) a writable folder."""
    p = out.path
    if os.path.lexists(p) and not p.exists():
        raise AuditError(f"{p}: {out.what} is a broken symbolic link" if out.folder else
                         f"{p}: {out.what} is a symbolic link to a missing location")
    if p.exists():
        if out.folder and not p.is_dir():
            raise AuditError(f"{p}: {out.what} exists and is not a folder")
        if not out.folder and p.is_dir():
            raise AuditError(f"{p}: {out.what} is a folder, expected a file path")
        if not out.folder and not p.is_file():
            raise AuditError(f"{p}: {out.what} exists and is not a regular file")
        where = p if out.folder else (p.parent if str(p.parent) else Path("."))
        if not os.access(where, os.W_OK | os.X_OK):
            raise AuditError(f"{p}: cannot write the {out.what}: {where} is not writable")
        return
    anc = p.parent
    while not os.path.lexists(anc) and anc != anc.parent:
        anc = anc.parent
    if not anc.exists():
        raise AuditError(f"{p}: cannot create the {out.what}: {anc} is a broken symbolic link")
    if not anc.is_dir():
        raise AuditError(f"{p}: cannot create the {out.what}: {anc} is a file, not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise AuditError(f"{p}: cannot create the {out.what}: {anc} is not writable")


def check_outputs(outputs: Iterable[Output | None], inputs: Iterable[PathLike | None]) -> None:
    """Refuse (AuditError, one line) outputs that would touch an input, collide or cannot be created.

    Inputs are files or folders the tool reads; missing ones are compared by path. Symbolic
    links are resolved on both sides. Call before any work starts.
    """
    outs = [o for o in outputs if o is not None]
    srcs = [Path(s) for s in inputs if s is not None]
    real_srcs = [(s, _real(s), s.is_dir()) for s in srcs]
    real_outs = [_real(o.path) for o in outs]
    for out, real_out in zip(outs, real_outs):
        for src, real_src, src_is_dir in real_srcs:
            msg = _conflict(out, real_out, src, real_src, src_is_dir)
            if msg:
                raise AuditError(f"{out.path}: {msg}")
    for i, (a, ra) in enumerate(zip(outs, real_outs)):
        for b, rb in zip(outs[i + 1:], real_outs[i + 1:]):
            if ra == rb or (b.folder and _written(b, rb, ra)) or (a.folder and _written(a, ra, rb)):
                raise AuditError(f"{b.path}: the {b.what} and the {a.what} {a.path} overlap")
    for out in outs:
        _check_creatable(out)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """A temporary file beside ``path`` for the block to write (by name); when the block ends
    without an error it gets mode 0644 and replaces ``path``, otherwise it is removed and
    ``path`` is left as it was."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: PathLike, write: Callable) -> Path:
    """Write a file atomically: ``write(fh)`` fills a binary file (atomic_path)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        write(fh)
    return Path(path)
