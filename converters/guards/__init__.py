"""Guards: per-op checks for op versions whose semantics differ from the converter that serves them.

A guard names the op versions it admits through another version's converter (``admits``: first
ONNX since-version of a run of type-only-identical versions -> the registered version whose
converter serves the run) and refuses, with a one-line reason, the nodes that use what the
serving converter does not implement. ``refuse`` is asked about every node of the op, whatever its
version, so a guard can also refuse a feature that a native onnx2torch converter ignores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

Consts = Callable[[str], "np.ndarray | None"]
Refuse = Callable[[onnx.NodeProto, int, Consts], "str | None"]


@dataclass(frozen=True)
class Guard:
    op: str
    refuse: Refuse
    admits: Mapping[int, int] = field(default_factory=dict)
    note: str = ""
    domain: str = ""


def attrs(node: onnx.NodeProto) -> dict:
    """The node's attributes as Python values (strings decoded)."""
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def has_input(node: onnx.NodeProto, index: int) -> bool:
    return len(node.input) > index and bool(node.input[index])


def has_output(node: onnx.NodeProto, index: int) -> bool:
    return len(node.output) > index and bool(node.output[index])


def _load() -> tuple[Guard, ...]:
    from audit.converters.guards import (
        average_pool,
        batch_norm,
        cast,
        depth_to_space,
        dropout,
        max_pool,
        pad,
        resize,
    )

    mods = (average_pool, batch_norm, cast, depth_to_space, dropout, max_pool, pad, resize)
    return tuple(m.GUARD for m in mods)


_GUARDS: dict[tuple[str, str], Guard] | None = None


def guards() -> dict[tuple[str, str], Guard]:
    """(domain, op) -> Guard, for every guard module."""
    global _GUARDS
    if _GUARDS is None:
        _GUARDS = {(g.domain, g.op): g for g in _load()}
    return _GUARDS
