"""Neuron-bearing layers (Conv, Gemm, MatMul dense) and streamed per-unit mean activations."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from audit.graphs.passes import ACTIVATIONS, attr, consumers, copy_model, initializers

PROBE_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class ProbeLayer:
    name: str            # ONNX node name (also the torch module name, '.' -> '/')
    op: str              # op of the node in the user's graph (MatMul for a fused MatMul+Add)
    units: int           # conv channels / dense neurons
    tensor: str          # exposed tensor: node output, or the directly following activation's
    axis: int            # unit axis of that tensor: 1 for conv, -1 for dense
    weight: str          # initializer names in the normalised graph
    bias: str | None
    activation: str | None
    is_output: bool      # the class-score layer; never reset

    def to_dict(self) -> dict:
        return {"name": self.name, "op": self.op, "units": self.units,
                "activation": self.activation, "is_output": self.is_output}


def find_probe_layers(model: onnx.ModelProto, original: onnx.ModelProto | None = None
                      ) -> list[ProbeLayer]:
    inits = initializers(model)
    cons = consumers(model)
    orig_ops = {n.name: n.op_type for n in (original or model).graph.node if n.name}
    found: list[tuple[onnx.NodeProto, int, int, str, str | None]] = []
    for n in model.graph.node:
        if n.op_type not in PROBE_OPS or len(n.input) < 2 or n.input[1] not in inits:
            continue
        w = inits[n.input[1]]
        dims = list(w.dims)
        if n.op_type == "Conv":
            units, axis = dims[0], 1
        elif n.op_type == "Gemm":
            units, axis = (dims[0] if attr(n, "transB", 0) else dims[1]), -1
        else:
            if len(dims) != 2:
                continue
            units, axis = dims[1], -1
        bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
        found.append((n, units, axis, n.input[1], bias))
    outputs = _last_layers(model, [f[0] for f in found])
    layers = []
    for n, units, axis, weight, bias in found:
        tensor, act = n.output[0], None
        users = cons.get(tensor, [])
        if len(users) == 1 and users[0].op_type in ACTIVATIONS:
            tensor, act = users[0].output[0], users[0].op_type
        layers.append(ProbeLayer(name=n.name, op=orig_ops.get(n.name, n.op_type), units=int(units),
                                 tensor=tensor, axis=axis, weight=weight, bias=bias, activation=act,
                                 is_output=n.name in outputs))
    return layers


def _last_layers(model: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> set[str]:
    """Probe nodes with no other probe node downstream: the class-score layer(s)."""
    cons = consumers(model)
    names = {n.name for n in nodes}
    last = set()
    for n in nodes:
        stack, seen, downstream = list(n.output), set(), False
        while stack and not downstream:
            t = stack.pop()
            for u in cons.get(t, []):
                if u.name in names:
                    downstream = True
                    break
                if u.name not in seen:
                    seen.add(u.name)
                    stack.extend(u.output)
        if not downstream:
            last.add(n.name)
    return last


def expose(model: onnx.ModelProto, layers: Iterable[ProbeLayer]) -> onnx.ModelProto:
    """A copy of model with each layer's tensor appended as a typed graph output."""
    m = copy_model(model)
    have = {o.name for o in m.graph.output}
    wanted = [layer.tensor for layer in layers if layer.tensor not in have]
    types: dict[str, onnx.TypeProto] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(m)
        types = {vi.name: vi.type for vi in inferred.graph.value_info}
    except Exception:
        pass
    for name in dict.fromkeys(wanted):
        vi = helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        if name in types:
            vi.type.CopyFrom(types[name])
        m.graph.output.append(vi)
    return m


class MeanAccumulator:
    """Running per-unit mean over every axis but the unit axis; memory independent of N."""

    def __init__(self, axis: int) -> None:
        self.axis = axis
        self.total: np.ndarray | None = None
        self.count = 0

    def add(self, a: np.ndarray) -> None:
        a = np.moveaxis(a, self.axis, -1)
        flat = a.reshape(-1, a.shape[-1])
        s = flat.sum(axis=0, dtype=np.float64)
        self.total = s if self.total is None else self.total + s
        self.count += flat.shape[0]

    def mean(self) -> np.ndarray:
        if self.total is None:
            raise ValueError("no data")
        return self.total / max(self.count, 1)


def mean_activations(am, x01: np.ndarray, preprocess, layers: list[ProbeLayer], *,
                     batch_size: int = 256) -> dict[str, np.ndarray]:
    """Per-unit mean activation of each layer over x01 (NCHW [0,1]), streamed through ORT.

    The probing session runs with graph optimisations off so the exposed tensors are exactly
    the ones named; inputs are preprocessed batch by batch, so memory does not grow with N.
    """
    from audit.graphs.model import _runnable
    from audit.graphs.runtime import Runner, make_session

    key = ("probe", tuple(layer.tensor for layer in layers))
    if key not in am._sessions:
        am._sessions[key] = make_session(_runnable(expose(am.normalised, layers)), am.device,
                                         optimize=False)
    runner = Runner(am._sessions[key], am.info.input_name, fixed_batch=am.fixed_batch,
                    batch_size=batch_size)
    acc = {layer.name: MeanAccumulator(layer.axis) for layer in layers}
    names = [layer.tensor for layer in layers]
    for start in range(0, len(x01), batch_size):
        xb = am.model_input(x01[start:start + batch_size], preprocess)
        for res in runner.iter_run(xb, names):
            for layer, a in zip(layers, res):
                acc[layer.name].add(a)
    return {name: a.mean() for name, a in acc.items()}
