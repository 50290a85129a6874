"""Gelu-20, exact (``approximate='none'``) or with the tanh approximation."""

from __future__ import annotations

from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import result


@converter("Gelu", 20)
def convert(node, graph):
    approximate = node.attributes.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise NotImplementedError(f"Gelu with approximate={approximate!r} is not supported")
    return result(node, nn.GELU(approximate=approximate))
