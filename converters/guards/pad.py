"""Pad-18+ added an ``axes`` input (pads then cover only those axes); Pad-19 added the ``wrap`` mode.

Pad-18..25 is served by onnx2torch's Pad-13 converter, which reads ``pads`` as covering every axis.
"""

from __future__ import annotations

from audit.converters.guards import Guard, attrs, has_input


def refuse(node, version, consts):
    if version >= 18 and has_input(node, 3):
        return "an axes input is not supported"
    if attrs(node).get("mode", "constant") == "wrap":
        return "mode='wrap' is not supported"
    return None


GUARD = Guard("Pad", refuse, admits={18: 13}, note="no axes input, no mode='wrap'")
