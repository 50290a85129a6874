"""BatchNormalization-6/7 carry attributes BatchNormalization-9 dropped.

- ``spatial=0`` (7, and 6) normalises per activation rather than per channel.
- ``is_test=0`` (6, the default there) normalises with the batch's own statistics.
- the optional outputs of 6/7 (mean, var, saved_mean, saved_var) are training outputs.

Nodes without these are what BatchNormalization-9 computes, and onnx2torch's -9 converter
serves them.
"""

from __future__ import annotations

from audit.converters.guards import Guard, attrs, has_output


def refuse(node, version, consts):
    if version >= 9:
        return None
    a = attrs(node)
    if a.get("spatial", 1) != 1:
        return "spatial=0 is not supported"
    if version < 7 and a.get("is_test", 0) != 1:
        return "is_test=0 (batch statistics) is not supported"
    if any(has_output(node, i) for i in range(1, 5)):
        return "the training outputs (mean, var, saved_mean, saved_var) are not supported"
    return None


GUARD = Guard("BatchNormalization", refuse, admits={6: 9, 7: 9},
              note="spatial=1, is_test=1, the Y output only")
