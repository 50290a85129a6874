"""AveragePool-19 added ``dilations``; onnx2torch's AveragePool-11 converter has none."""

from __future__ import annotations

from audit.converters.guards import Guard, attrs


def refuse(node, version, consts):
    if any(d != 1 for d in attrs(node).get("dilations", [])):
        return "dilations other than 1 are not supported"
    return None


GUARD = Guard("AveragePool", refuse, admits={19: 11}, note="dilations all 1")
