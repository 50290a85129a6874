"""Converters for ONNX ops onnx2torch lacks, one small module per op.

Each module registers its converter with onnx2torch's ``add_converter`` through :func:`converter`,
which adds only the (domain, op, version) keys onnx2torch does not already have, or takes over an
onnx2torch converter that mis-converts part of an op through :func:`extend`; :func:`load` imports
the modules once. Later versions that differ from a registered one only in types are
aliased by ``audit.converters.registry``.
"""

from __future__ import annotations

import functools
import importlib

from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter

MODULES = (
    "affine", "cast_like", "cum_prod", "cumsum", "depth_to_space", "gelu", "global_lp_pool", "global_max_pool",
    "group_normalization", "hardmax", "hyperbolic", "image_scaler", "lp_normalization", "lp_pool", "matmul", "mish",
    "mvn", "pad", "reduce", "scaled_tanh", "shrink", "size", "slice", "space_to_depth", "split", "swish",
    "thresholded_relu", "trilu", "upsample",
)

ADDED: set[OperationDescription] = set()
EXTENDED: set[OperationDescription] = set()


def converter(op: str, *versions: int, domain: str = ""):
    """Register ``fn`` for each version of ``op`` that onnx2torch has no converter for."""

    def deco(fn):
        for v in versions:
            desc = OperationDescription(domain, op, v)
            if desc not in _CONVERTER_REGISTRY:
                add_converter(operation_type=op, version=v, domain=domain)(fn)
                ADDED.add(desc)
        return fn

    return deco


def extend(op: str, *versions: int, domain: str = ""):
    """Put ``fn(node, graph, base)`` in place of onnx2torch's converter ``base`` for each version of ``op``."""

    def deco(fn):
        for v in versions:
            desc = OperationDescription(domain, op, v)
            base = _CONVERTER_REGISTRY.get(desc)
            if base is None or desc in EXTENDED:
                continue
            _CONVERTER_REGISTRY[desc] = functools.wraps(base)(functools.partial(fn, base=base))
            EXTENDED.add(desc)
        return fn

    return deco


def load() -> None:
    for name in MODULES:
        importlib.import_module(f"{__name__}.{name}")
