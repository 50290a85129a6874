"""GroupNormalization-18 and -21: (x - mean) / sqrt(var + epsilon) per instance and group of
channels, then ``scale * . + bias``. In -18 ``scale`` and ``bias`` hold one value per group, in
-21 one per channel. -21 normalizes in ``stash_type`` and applies scale and bias in the input's
type; -18 computes in the input's type."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from onnx import TensorProto
from onnx2torch.utils.common import OnnxToTorchModule
from torch import nn

from audit.converters.ops import converter
from audit.converters.ops._common import result

STASH_TYPES = {
    TensorProto.FLOAT: torch.float32, TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16, TensorProto.BFLOAT16: torch.bfloat16,
}


class GroupNormalization(nn.Module, OnnxToTorchModule):
    def __init__(self, num_groups: int, epsilon: float, per_group: bool, stash: torch.dtype | None) -> None:
        super().__init__()
        self.num_groups, self.epsilon = int(num_groups), float(epsilon)
        self.per_group, self.stash = per_group, stash

    def forward(self, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if self.per_group:
            scale = scale.repeat_interleave(c // self.num_groups)
            bias = bias.repeat_interleave(c // self.num_groups)
        y = F.group_norm(x.to(self.stash or x.dtype), self.num_groups, eps=self.epsilon).to(x.dtype)
        shape = (1, c) + (1,) * (x.dim() - 2)
        return y * scale.reshape(shape) + bias.reshape(shape)


def _module(node, per_group: bool, stash: torch.dtype | None) -> GroupNormalization:
    if "num_groups" not in node.attributes:
        raise NotImplementedError("GroupNormalization: the num_groups attribute is missing")
    return GroupNormalization(node.attributes["num_groups"], node.attributes.get("epsilon", 1e-5), per_group, stash)


@converter("GroupNormalization", 18)
def convert18(node, graph):
    return result(node, _module(node, True, None))


@converter("GroupNormalization", 21)
def convert21(node, graph):
    stash_type = int(node.attributes.get("stash_type", TensorProto.FLOAT))
    if stash_type not in STASH_TYPES:
        raise NotImplementedError(f"GroupNormalization: stash_type={stash_type} is not supported")
    return result(node, _module(node, False, STASH_TYPES[stash_type]))
