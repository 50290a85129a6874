"""Mish-18: x * tanh(softplus(x))."""

from __future__ import annotations

from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import result


@converter("Mish", 18)
def convert(node, graph):
    return result(node, nn.Mish())
