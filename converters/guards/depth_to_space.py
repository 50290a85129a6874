"""DepthToSpace-1 is DepthToSpace-11 without ``mode``; -11's default mode DCR is -1's rearrangement,
so onnx2torch's DepthToSpace-11 converter serves it.
"""

from __future__ import annotations

from audit.converters.guards import Guard


def refuse(node, version, consts):
    return None


GUARD = Guard("DepthToSpace", refuse, admits={1: 11}, note="")
