"""Dropout: identity at inference unless Dropout-12+ is given a true ``training_mode``.

onnx2torch's converters drop only in torch's training mode and ignore ``training_mode``; a graph
that asks for dropout at inference (a constant true or a computed ``training_mode``) is refused,
as is a used ``mask`` output, which the converters do not produce.
"""

from __future__ import annotations

import numpy as np

from audit.converters.guards import Guard, has_input, has_output


def refuse(node, version, consts):
    if version >= 12 and has_input(node, 2):
        mode = consts(node.input[2])
        if mode is None:
            return "a training_mode input that is not a constant is not supported"
        if bool(np.asarray(mode).any()):
            return "training_mode=true (dropout at inference) is not supported"
    if has_output(node, 1):
        return "the mask output is not supported"
    return None


GUARD = Guard("Dropout", refuse, note="training_mode absent or constant false, no mask output")
