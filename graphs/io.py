"""Load and save ONNX models safely: clear errors, external data, atomic writes."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from audit.errors import AuditError, ModelError

# onnxruntime 1.17+ reads IR <= 10; newer onnx writes 11+ by default.
MAX_IR_VERSION = 10


def load_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Read an ONNX file (with its external data); raise ModelError with one line if unusable."""
    p = Path(path)
    if not p.exists():
        raise ModelError(f"{p}: no such file")
    if p.is_dir():
        raise ModelError(f"{p}: is a folder, expected an .onnx file")
    if not p.is_file():
        raise ModelError(f"{p}: not a regular file (a pipe or device is never read)")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ModelError(f"{p}: not an ONNX model (cannot parse: {_first_line(exc)})") from None
    except Exception as exc:  # protobuf raises assorted errors on arbitrary bytes
        raise ModelError(f"{p}: not an ONNX model ({type(exc).__name__})") from None
    if not model.graph.node or not model.opset_import or model.ir_version <= 0:
        raise ModelError(f"{p}: not an ONNX model (no graph, opset or IR version)")
    bad_text = _invalid_text(model)
    if bad_text:
        raise ModelError(f"{p}: corrupt model: {bad_text} is not valid UTF-8 text")
    if _uses_external_data(model):
        try:
            onnx.load_external_data_for_model(model, str(p.parent))
        except Exception as exc:
            raise ModelError(f"{p}: external data missing or unreadable ({_first_line(exc)})") from None
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise ModelError(f"{p}: initializer {init.name!r} has unresolved external data")
    try:
        _check_tensor_sizes(model)
    except ValueError as exc:
        raise ModelError(f"{p}: truncated or corrupt model ({exc})") from None
    nan = _nan_tensor(model)
    if nan:
        raise ModelError(f"{p}: {nan} holds NaN values")
    return model


def _invalid_text(msg, where: str = "") -> str | None:
    """The first string field (a name, an op type, an attribute...) that is not valid UTF-8.

    protobuf parses such bytes without complaint (ONNX is proto2) and hands them back as
    bytes instead of str; flipped bytes in a file often land there."""
    from google.protobuf.descriptor import FieldDescriptor

    for field in msg.DESCRIPTOR.fields:  # tensor bytes are never touched, only text and messages
        if field.type not in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE):
            continue
        repeated = (field.is_repeated if hasattr(field, "is_repeated")
                    else field.label == FieldDescriptor.LABEL_REPEATED)
        if repeated:
            values = getattr(msg, field.name)
        elif field.type == FieldDescriptor.TYPE_STRING or msg.HasField(field.name):
            values = [getattr(msg, field.name)]
        else:
            continue
        for i, v in enumerate(values):
            name = (f"{where}.{field.name}" if where else field.name) + (f"[{i}]" if repeated else "")
            if field.type == FieldDescriptor.TYPE_STRING:
                if not isinstance(v, str):
                    return name
            else:
                found = _invalid_text(v, name)
                if found:
                    return found
    return None


def _nan_tensor(model: onnx.ModelProto) -> str | None:
    """The first initializer or Constant node of the main graph whose float values hold NaN."""
    import numpy as np
    from onnx import numpy_helper

    tensors = [(f"initializer {t.name!r}", t) for t in model.graph.initializer]
    tensors += [(f"Constant node {n.name or n.output[0]!r}", a.t) for n in model.graph.node
                if n.op_type == "Constant" and n.output for a in n.attribute if a.name == "value"]
    for what, t in tensors:
        try:
            arr = numpy_helper.to_array(t)
        except Exception:  # initializers were read above; onnxruntime reports a bad Constant
            continue
        if arr.dtype.kind == "f" and arr.size and np.isnan(arr).any():
            return what
    return None


def _check_tensor_sizes(model: onnx.ModelProto) -> None:
    """A truncated file often still parses; catch initializers whose data is short."""
    from onnx import numpy_helper

    for init in model.graph.initializer:
        try:
            arr = numpy_helper.to_array(init)
        except Exception as exc:
            raise ValueError(f"initializer {init.name!r}: {_first_line(exc)}") from None
        expected = 1
        for d in init.dims:
            expected *= d
        if arr.size != expected:
            raise ValueError(f"initializer {init.name!r} holds {arr.size} values, expected {expected}")


def _uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def had_external_data(path: str | os.PathLike) -> bool:
    """Whether the file at path stores initializers outside the .onnx file."""
    return _uses_external_data(onnx.load(str(path), load_external_data=False))


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *,
               external_data: bool = False, inputs: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Write model atomically (temp folder beside the target, then rename).

    Refuses to overwrite any path in ``inputs``. With external_data the weights go to
    ``<name>.data`` beside the model, as the original exporter laid them out.
    """
    out = Path(path)
    for src in inputs:
        if _same_file(out, Path(src)):
            raise AuditError(f"refusing to overwrite the input file {src}")
        if external_data and _same_file(Path(str(out) + ".data"), Path(str(src) + ".data")):
            raise AuditError(f"refusing to overwrite the input's external data {src}.data")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=".audit-", dir=out.parent))
    try:
        tmp = tmpdir / out.name
        m = onnx.ModelProto()
        m.CopyFrom(model)
        if external_data:
            onnx.save_model(m, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=out.name + ".data", size_threshold=1024)
            data = tmpdir / (out.name + ".data")
            if data.exists():
                os.replace(data, str(out) + ".data")
        else:
            onnx.save_model(m, str(tmp))
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
