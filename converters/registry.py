"""Teach onnx2torch the newer (and a few older) op versions whose semantics it already knows.

onnx2torch keys converters by (domain, op, since-version). Many ONNX version bumps only add
tensor types (bfloat16, float8, int4) and change nothing for float32 graphs; for those we
register the nearest existing converter under the new version, guarded where a bump added
an attribute or input that the old converter would silently ignore.
"""

from __future__ import annotations

import functools

from onnx import defs
from onnx2torch.node_converters.registry import (
    _CONVERTER_REGISTRY,
    OperationDescription,
    add_converter,
)

# op -> versions whose change is type-only (or handled by a guard below)
TYPE_ONLY = {
    "Reshape": (19, 21), "Shape": (19, 21), "Conv": (22,), "MaxPool": (22,),
    "AveragePool": (19, 22), "Flatten": (1, 21), "Transpose": (21,), "Unsqueeze": (21,),
    "Cast": (19, 21), "Identity": (19, 21), "Constant": (19, 21), "Pad": (18, 19, 21),
    "Dropout": (7, 22), "GlobalAveragePool": (22,), "Gemm": (7,), "BatchNormalization": (7,),
    "HardSigmoid": (22,), "Squeeze": (23,), "Elu": (22,), "Selu": (22,), "Softplus": (22,),
    "LeakyRelu": (), "Tanh": (), "Sigmoid": (),
}


def _guard(op: str, conv):
    @functools.wraps(conv)
    def wrapped(node, graph):
        a = node.attributes
        if op == "AveragePool" and any(d != 1 for d in a.get("dilations", [])):
            raise NotImplementedError("AveragePool with dilations is not supported")
        if op == "Pad" and len(node.input_values) > 3 and node.input_values[3]:
            raise NotImplementedError("Pad with an axes input is not supported")
        if op == "BatchNormalization" and a.get("spatial", 1) != 1:
            raise NotImplementedError("BatchNormalization with spatial=0 is not supported")
        return conv(node, graph)

    return wrapped


@functools.lru_cache(maxsize=1)
def register_aliases() -> int:
    """Idempotent; returns how many aliases were added."""
    added = 0
    for op, versions in TYPE_ONLY.items():
        have = sorted(d.version for d in _CONVERTER_REGISTRY if d.operation_type == op and d.domain == "")
        if not have:
            continue
        for v in versions:
            desc = OperationDescription("", op, v)
            if desc in _CONVERTER_REGISTRY:
                continue
            lower = [h for h in have if h < v]
            base = lower[-1] if lower else have[0]
            conv = _CONVERTER_REGISTRY[OperationDescription("", op, base)]
            add_converter(operation_type=op, version=v)(_guard(op, conv))
            added += 1
    return added


def missing_converters(model) -> list[str]:
    """Ops of the model that onnx2torch (with our aliases) cannot convert, as readable strings."""
    register_aliases()
    versions = {o.domain or "": o.version for o in model.opset_import}
    versions.setdefault("", versions.get("ai.onnx", 1))
    out = []
    for n in model.graph.node:
        dom = n.domain or ""
        try:
            since = defs.get_schema(n.op_type, max_inclusive_version=versions.get(dom, 1),
                                    domain=dom).since_version
        except Exception:
            since = versions.get(dom, 1)
        if OperationDescription(dom, n.op_type, since) not in _CONVERTER_REGISTRY:
            out.append(f"{n.op_type} (node {n.name!r}, opset {versions.get(dom, 1)}, version {since})")
    return out
