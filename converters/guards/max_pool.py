"""MaxPool-1 is MaxPool-8 without ``storage_order`` and the ``Indices`` output.

MaxPool-8's defaults (row-major storage order, no indices) compute what MaxPool-1 computes, so
onnx2torch's MaxPool-8 converter serves it; there is nothing a MaxPool-1 node can hold that it
would get wrong.
"""

from __future__ import annotations

from audit.converters.guards import Guard, has_output


def refuse(node, version, consts):
    if has_output(node, 1):
        return "the Indices output is not supported"
    return None


GUARD = Guard("MaxPool", refuse, admits={1: 8}, note="no Indices output")
