"""Small graph rewrites. Each pass takes a model and a context and returns (new model, modified).

Passes never mutate their input. Passes that replace initializers record in ``ctx.provenance``
how a new initializer's value maps back to an initializer of the *original* graph, so trained
weights can be written back into the graph the user gave us.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from audit.errors import ModelError

log = logging.getLogger(__name__)

# new initializer name -> (original initializer name, fn(new value) -> original value)
Provenance = dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]

ACTIVATIONS = {"Relu", "LeakyRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Softplus", "HardSigmoid",
               "Clip", "PRelu", "Gelu", "HardSwish", "Mish", "Celu", "ThresholdedRelu", "Softsign"}


class PassError(ModelError):
    """A rewrite could not be applied."""


@dataclass
class PassContext:
    provenance: Provenance = field(default_factory=dict)
    applied: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # assumptions a pass made, for `inspect`

    def origin(self, name: str) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
        return self.provenance.get(name, (name, _identity))

    def derive(self, new: str, src: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
        """Record new = f(src); store the inverse chain back to the original initializer."""
        orig, back = self.origin(src)
        self.provenance[new] = (orig, lambda v, back=back, fn=fn: back(fn(v)))


Pass = Callable[[onnx.ModelProto, PassContext], tuple[onnx.ModelProto, bool]]


def _identity(v: np.ndarray) -> np.ndarray:
    return v


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def run_passes(model: onnx.ModelProto, passes: Sequence[Pass], ctx: PassContext | None = None
               ) -> tuple[onnx.ModelProto, PassContext]:
    """Apply passes in order; a failure names the passes that ran before it."""
    ctx = ctx or PassContext()
    for p in passes:
        try:
            model, modified = p(model, ctx)
        except PassError as exc:
            raise PassError(f"{exc} (in pass {p.__name__} after {', '.join(ctx.applied) or 'none'})"
                            ) from None
        if modified:
            ctx.applied.append(p.__name__)
    return model, ctx


# ---------------------------------------------------------------- helpers
def initializers(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def opset(model: onnx.ModelProto, domain: str = "") -> int:
    for o in model.opset_import:
        if o.domain in (domain, "ai.onnx" if domain == "" else domain):
            return o.version
    return 1


def _replace_init(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    for i, t in enumerate(model.graph.initializer):
        if t.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, name))
            return
    model.graph.initializer.append(numpy_helper.from_array(value, name))


def _unique(model: onnx.ModelProto, base: str) -> str:
    used = {t.name for t in model.graph.initializer} | {o for n in model.graph.node for o in n.output}
    used |= {i.name for i in model.graph.input}
    name, k = base, 0
    while name in used:
        k += 1
        name = f"{base}_{k}"
    return name


def _remove_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)


def _add_after(cons: dict[str, list[onnx.NodeProto]], tensor: str, inits) -> tuple[onnx.NodeProto, str] | None:
    """The only consumer of tensor when it is an Add of an initializer: (that Add, the initializer)."""
    users = cons.get(tensor, [])
    if len(users) != 1 or users[0].op_type != "Add":
        return None
    add = users[0]
    other = add.input[1] if add.input[0] == tensor else add.input[0]
    return (add, other) if other in inits else None


def _bias_initializer(m: onnx.ModelProto, ctx: PassContext, owner: str, src: str, value: np.ndarray) -> str:
    """A new 1-D bias initializer for node `owner`, holding initializer src's values; write-back
    reshapes it to src's shape."""
    name = _unique(m, owner + "_bias")
    m.graph.initializer.append(numpy_helper.from_array(value.reshape(-1), name))
    shape = tuple(initializers(m)[src].dims)
    ctx.derive(name, src, lambda v, s=shape: np.reshape(v, s))
    return name


def _absorb_dense_bias(m: onnx.ModelProto, ctx: PassContext, cons, inits, graph_outputs: set[str],
                       owner: str, out: str, units: int) -> tuple[str, str] | None:
    """The Add of a per-unit bias ([N] or [1, N]) that alone consumes dense output `out` (not a
    graph output), taken out of the graph: (the new 1-D bias initializer, the Add's output)."""
    found = None if out in graph_outputs else _add_after(cons, out, inits)
    if found is None:
        return None
    add, other = found
    b = inits[other]
    if b.size != units or not (b.ndim == 1 or b.shape == (1, units)):
        return None
    m.graph.node.remove(add)
    return _bias_initializer(m, ctx, owner, other, b), add.output[0]


# ---------------------------------------------------------------- structural passes
def remove_initializer_inputs(model: onnx.ModelProto, ctx: PassContext):
    """Old exporters (IR < 4, CNTK) list every initializer as a graph input too."""
    inits = initializers(model)
    extra = [i for i in model.graph.input if i.name in inits]
    if not extra:
        return model, False
    m = copy_model(model)
    keep = [i for i in m.graph.input if i.name not in inits]
    del m.graph.input[:]
    m.graph.input.extend(keep)
    return m, True


def name_graph_and_nodes(model: onnx.ModelProto, ctx: PassContext):
    """Give the graph and every node a unique, non-empty name (torch modules are named by them)."""
    m = copy_model(model)
    modified = False
    if not m.graph.name:
        m.graph.name = "main_graph"
        modified = True
    seen: set[str] = set()
    for i, n in enumerate(m.graph.node):
        name = n.name or f"{n.op_type}_{i}"
        base, k = name, 0
        while name in seen:
            k += 1
            name = f"{base}_{k}"
        seen.add(name)
        if name != n.name:
            n.name = name
            modified = True
    return (m, True) if modified else (model, False)


def dedupe_outputs(model: onnx.ModelProto, ctx: PassContext):
    names = [o.name for o in model.graph.output]
    if len(set(names)) == len(names):
        return model, False
    m = copy_model(model)
    seen: set[str] = set()
    keep = []
    for o in m.graph.output:
        if o.name not in seen:
            seen.add(o.name)
            keep.append(o)
    del m.graph.output[:]
    m.graph.output.extend(keep)
    return m, True


def toposort(model: onnx.ModelProto, ctx: PassContext):
    """keras2onnx and hand-rolled graphs list nodes out of order; ORT accepts it, onnx2torch not."""
    g = model.graph
    available = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending = list(g.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        progressed = False
        rest = []
        for n in pending:
            if all(i in available for i in n.input):
                ordered.append(n)
                available.update(n.output)
                progressed = True
            else:
                rest.append(n)
        if not progressed:
            missing = sorted({i for n in rest for i in n.input if i not in available})
            raise PassError(f"graph has a cycle or undefined tensors: {missing[:3]}")
        pending = rest
    if [n.name for n in ordered] == [n.name for n in g.node] and ordered == list(g.node):
        return model, False
    m = copy_model(model)
    del m.graph.node[:]
    m.graph.node.extend(ordered)
    return m, True


def lift_constants(model: onnx.ModelProto, ctx: PassContext):
    """Constant nodes holding a tensor become initializers (onnx2torch can then see weights)."""
    m = copy_model(model)
    keep, modified = [], False
    for n in m.graph.node:
        if n.op_type == "Constant" and len(n.output) == 1:
            value = None
            for a in n.attribute:
                if a.name == "value":
                    value = numpy_helper.to_array(a.t)
                elif a.name in ("value_float", "value_int"):
                    value = np.array(helper.get_attribute_value(a),
                                     dtype=np.float32 if a.name == "value_float" else np.int64)
                elif a.name in ("value_floats", "value_ints"):
                    value = np.array(helper.get_attribute_value(a),
                                     dtype=np.float32 if a.name == "value_floats" else np.int64)
            if value is not None:
                m.graph.initializer.append(numpy_helper.from_array(value, n.output[0]))
                modified = True
                continue
        keep.append(n)
    if not modified:
        return model, False
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return m, True


_FOLDABLE: dict[str, Callable] = {}


def fold_initializer_ops(model: onnx.ModelProto, ctx: PassContext):
    """Evaluate shape-only ops whose inputs are all initializers (CNTK reshapes its weights).

    Reshape/Transpose/Squeeze/Unsqueeze/Flatten/Identity keep a way back to the original
    initializer, so weights folded this way stay trainable and can be written back.
    """
    m = copy_model(model)
    modified = False
    while True:
        inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        target = None
        for n in m.graph.node:
            if n.op_type in ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity",
                             "Cast") and n.input and all(i in inits for i in n.input if i):
                target = n
                break
        if target is None:
            break
        src = target.input[0]
        x = inits[src]
        try:
            y, inverse = _fold(target, x, [inits[i] for i in target.input[1:] if i], opset(m))
        except Exception as exc:
            raise PassError(f"cannot fold {target.op_type} node {target.name!r}: {exc}") from None
        m.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(y), target.output[0]))
        if inverse is not None:
            ctx.derive(target.output[0], src, inverse)
        m.graph.node.remove(target)
        modified = True
    if modified:
        _remove_unused_initializers(m)
        return m, True
    return model, False


def _fold(node: onnx.NodeProto, x: np.ndarray, extra: list[np.ndarray], op_version: int):
    shape = x.shape
    if node.op_type == "Reshape":
        target = [int(d) for d in extra[0]]
        allowzero = attr(node, "allowzero", 0)
        target = [shape[i] if (d == 0 and not allowzero) else d for i, d in enumerate(target)]
        y = x.reshape(target)
        return y, lambda v, s=shape: np.reshape(v, s)
    if node.op_type == "Transpose":
        perm = attr(node, "perm") or list(range(x.ndim))[::-1]
        inv = np.argsort(perm)
        return np.transpose(x, perm), lambda v, inv=inv: np.transpose(v, inv)
    if node.op_type == "Flatten":
        axis = attr(node, "axis", 1)
        axis = axis if axis >= 0 else x.ndim + axis
        y = x.reshape(int(np.prod(shape[:axis])), -1)
        return y, lambda v, s=shape: np.reshape(v, s)
    if node.op_type in ("Squeeze", "Unsqueeze"):
        axes = attr(node, "axes")
        if axes is None and extra:
            axes = [int(a) for a in extra[0]]
        if node.op_type == "Squeeze":
            y = np.squeeze(x, axis=tuple(axes) if axes else None)
        else:
            y = x
            for a in sorted(a if a >= 0 else a + x.ndim + len(axes) for a in axes):
                y = np.expand_dims(y, a)
        return y, lambda v, s=shape: np.reshape(v, s)
    if node.op_type == "Identity":
        return x, _identity
    if node.op_type == "Cast":
        to = helper.tensor_dtype_to_np_dtype(attr(node, "to"))
        return x.astype(to), (lambda v, dt=x.dtype: v.astype(dt))
    raise ValueError("unsupported")


def fuse_conv_add(model: onnx.ModelProto, ctx: PassContext):
    """Conv without bias followed by Add of a per-channel constant becomes Conv with bias (CNTK)."""
    m = copy_model(model)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    cons = consumers(m)
    modified = False
    graph_outputs = {o.name for o in m.graph.output}
    for conv in list(m.graph.node):
        if conv.op_type != "Conv" or len(conv.input) > 2 and conv.input[2]:
            continue
        if conv.input[1] not in inits or conv.output[0] in graph_outputs:
            continue
        found = _add_after(cons, conv.output[0], inits)
        if found is None:
            continue
        add, other = found
        w = inits[conv.input[1]]
        c, spatial = w.shape[0], w.ndim - 2
        b = inits[other]
        squeezed = b.shape
        while len(squeezed) > spatial + 1 and squeezed[0] == 1:
            squeezed = squeezed[1:]
        # per-channel bias must broadcast as [C, 1, ..., 1]; a 1-D [C] would broadcast over W
        if b.size != c or (squeezed != (c,) + (1,) * spatial and c != 1):
            continue
        bias_name = _bias_initializer(m, ctx, conv.name, other, b.astype(np.float32))
        while len(conv.input) < 3:
            conv.input.append("")
        conv.input[2] = bias_name
        conv.output[0] = add.output[0]
        m.graph.node.remove(add)
        modified = True
    if modified:
        _remove_unused_initializers(m)
        return m, True
    return model, False


def fuse_matmul_add(model: onnx.ModelProto, ctx: PassContext):
    """MatMul(x, W) (+ Add b) on a 2-D x becomes Gemm, which onnx2torch maps to nn.Linear."""
    ranks = _ranks(model)
    m = copy_model(model)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    cons = consumers(m)
    graph_outputs = {o.name for o in m.graph.output}
    modified = False
    for mm in list(m.graph.node):
        if mm.op_type != "MatMul" or mm.input[1] not in inits or inits[mm.input[1]].ndim != 2:
            continue
        if ranks.get(mm.input[0]) != 2:
            continue
        gemm_inputs = [mm.input[0], mm.input[1]]
        out = mm.output[0]
        absorbed = _absorb_dense_bias(m, ctx, cons, inits, graph_outputs, mm.name, out,
                                      inits[mm.input[1]].shape[1])
        if absorbed is not None:
            gemm_inputs.append(absorbed[0])
            out = absorbed[1]
        gemm = helper.make_node("Gemm", gemm_inputs, [out], name=mm.name)
        idx = list(m.graph.node).index(mm)
        m.graph.node.remove(mm)
        m.graph.node.insert(idx, gemm)
        modified = True
    if modified:
        _remove_unused_initializers(m)
        return m, True
    return model, False


def _gemm_c(m: onnx.ModelProto, ctx: PassContext, g: onnx.NodeProto, inits: dict, units: int
            ) -> tuple[bool, bool]:
    """gemm_bias's rewrite of one Gemm's C input. Returns (the Gemm still has a C, changed)."""
    has_c = len(g.input) > 2 and bool(g.input[2])
    beta = attr(g, "beta", 1.0)
    if has_c and g.input[2] in inits and beta == 0.0:
        del g.input[2:]
        return False, True
    if has_c and g.input[2] in inits and inits[g.input[2]].size == 1 and units > 1:
        c = inits[g.input[2]].astype(np.float32).reshape(()) * np.float32(beta)
        value = _unique(m, g.name + "_c")
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(c, np.float32), value))
        _add_c_after(m, g, value)
        return False, True
    if has_c and g.input[2] in inits and inits[g.input[2]].shape == (1, units):
        g.input[2] = _bias_initializer(m, ctx, g.name, g.input[2], inits[g.input[2]])
        return True, True
    if has_c and g.input[2] not in inits:
        c = g.input[2]
        if beta != 1.0:
            scale = _unique(m, g.name + "_beta")
            m.graph.initializer.append(numpy_helper.from_array(np.array(beta, np.float32), scale))
            c = _unique(m, g.input[2] + "_scaled")
            m.graph.node.insert(list(m.graph.node).index(g), helper.make_node(
                "Mul", [g.input[2], scale], [c], name=_unique(m, g.name + "_scale_c")))
        _add_c_after(m, g, c)
        set_attr(g, "beta", 1.0)
        return False, True
    return has_c, False


def gemm_bias(model: onnx.ModelProto, ctx: PassContext):
    """Make a dense Gemm one that onnx2torch converts to a trainable nn.Linear (its converter
    keeps any other Gemm as a functional op whose weight is a constant): no transA, and a C that
    is absent or a per-unit [N] initializer. jax2onnx writes Gemm(beta=0, C=scalar 0) followed
    by Add of a [1, N] bias; other exporters a C of shape [1, N] or a C computed in the graph.
    - transA=1 becomes a Transpose of A;
    - a C that beta=0 cancels is dropped;
    - a C of one value (scalar, [1], [1,1]) becomes an Add after the Gemm;
    - a C initializer of shape [1, N] becomes an [N] one (written back as [1, N]);
    - a C computed in the graph becomes an Add after the Gemm (of C times beta);
    - an Add of a per-unit initializer ([N] or [1, N]) right after a Gemm without C becomes its C.
    """
    if not any(n.op_type == "Gemm" for n in model.graph.node):
        return model, False
    m = copy_model(model)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    graph_outputs = {o.name for o in m.graph.output}
    cons = consumers(m)
    modified = False
    for g in list(m.graph.node):
        if g.op_type != "Gemm" or len(g.input) < 2 or g.input[1] not in inits:
            continue
        units = inits[g.input[1]].shape[0 if attr(g, "transB", 0) else 1]
        if attr(g, "transA", 0):
            at = _unique(m, g.input[0] + "_t")
            m.graph.node.insert(list(m.graph.node).index(g), helper.make_node(
                "Transpose", [g.input[0]], [at], name=_unique(m, g.name + "_transpose_a"), perm=[1, 0]))
            g.input[0] = at
            set_attr(g, "transA", 0)
            modified = True
        has_c, changed = _gemm_c(m, ctx, g, inits, units)
        modified = modified or changed
        absorbed = None if has_c else _absorb_dense_bias(m, ctx, cons, inits, graph_outputs,
                                                          g.name, g.output[0], units)
        if absorbed is None:
            continue
        g.input.append(absorbed[0])
        set_attr(g, "beta", 1.0)
        g.output[0] = absorbed[1]
        modified = True
    if modified:
        _remove_unused_initializers(m)
        return m, True
    return model, False


def _add_c_after(m: onnx.ModelProto, g: onnx.NodeProto, c: str) -> None:
    """Gemm g without its C, followed by an Add of tensor c that writes g's output; in place."""
    out = g.output[0]
    g.output[0] = _unique(m, out + "_gemm")
    del g.input[2:]
    m.graph.node.insert(list(m.graph.node).index(g) + 1, helper.make_node(
        "Add", [g.output[0], c], [out], name=_unique(m, g.name + "_add_c")))


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> rank. Up to Reshape-13, onnx infers no output shape for a Reshape to a
    target computed in the graph (tf2onnx flattens so: Shape, Slice, Concat); its rank is the
    target's length, given to shape inference so the tensors after it get theirs too."""
    inferred = _inferred(model)
    shapes = _shapes_of(inferred)
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in
            list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output)}
    hints = []
    for n in model.graph.node:
        target = shapes.get(n.input[1]) if n.op_type == "Reshape" and len(n.input) > 1 else None
        if (target is None or n.output[0] in shapes or len(target) != 1 or not isinstance(target[0], int)
                or not elem.get(n.input[0])):
            continue
        hints.append(helper.make_tensor_value_info(n.output[0], elem[n.input[0]], [None] * target[0]))
    if hints:
        hinted = copy_model(model)
        named = {vi.name for vi in hints}
        keep = [vi for vi in hinted.graph.value_info if vi.name not in named]
        del hinted.graph.value_info[:]
        hinted.graph.value_info.extend(keep + hints)
        try:
            shapes = {**shapes, **_shapes_of(onnx.shape_inference.infer_shapes(hinted))}
        except Exception as exc:
            log.debug("shape inference with Reshape ranks failed: %s", exc)
    return {name: len(dims) for name, dims in shapes.items()}


def _static_shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Tensor name -> dims (ints, symbolic names or None) from shape inference, or from the
    graph's own value infos where inference fails."""
    return _shapes_of(_inferred(model))


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with onnx's shape inference in its value infos; the model itself where that fails."""
    try:
        return onnx.shape_inference.infer_shapes(model)
    except Exception:
        return model


def _shapes_of(model: onnx.ModelProto) -> dict[str, list]:
    out = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    return out


def reshape_allowzero(model: onnx.ModelProto, ctx: PassContext):
    """Reshape(allowzero=1) equals allowzero=0 when no target dim is 0 (dynamo emits it always)."""
    m = copy_model(model)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    prods = producers(m)
    modified = False
    for n in m.graph.node:
        if n.op_type != "Reshape" or attr(n, "allowzero", 0) != 1:
            continue
        if not _shape_has_no_zero(n.input[1], inits, prods):
            raise PassError(f"Reshape node {n.name!r} uses allowzero=1 with a possibly-zero target dim")
        set_attr(n, "allowzero", 0)
        modified = True
    return (m, True) if modified else (model, False)


def _shape_has_no_zero(name: str, inits, prods) -> bool:
    if name in inits:
        return not np.any(inits[name] == 0)
    node = prods.get(name)
    if node is None:
        return False
    if node.op_type == "Concat":
        return all(_shape_has_no_zero(i, inits, prods) for i in node.input)
    # Dims read from a runtime shape (batch size etc.) are non-zero for non-empty batches.
    if node.op_type in ("Shape", "Gather", "Slice", "Unsqueeze", "Squeeze", "Cast"):
        src = node.input[0]
        return src not in inits or _shape_has_no_zero(src, inits, prods)
    return False


_SCORE_PASS_THROUGH = ("Identity", "Reshape", "Flatten", "Squeeze", "Cast", "Dropout")


def strip_output_softmax(model: onnx.ModelProto, ctx: PassContext):
    """Expose the scores before a final Softmax/LogSoftmax, so training sees logits."""
    out = model.graph.output[0].name
    prods = producers(model)
    node = prods.get(out)
    chain = []  # shape-only ops between the softmax and the output (skl2onnx: an Identity)
    while node is not None and node.op_type in _SCORE_PASS_THROUGH:
        chain.append(node)
        node = prods.get(node.input[0])
    if node is None or node.op_type not in ("Softmax", "LogSoftmax"):
        return model, False
    m = copy_model(model)
    pre = node.input[0]
    if chain:  # feed the chain with the scores; the softmax goes when nothing else reads it
        for n in m.graph.node:
            if n.name == chain[-1].name:
                n.input[0] = pre
        if not any(node.output[0] in n.input for n in m.graph.node):
            m.graph.node.remove(next(n for n in m.graph.node if n.name == node.name))
        return m, True
    m.graph.node.remove(next(n for n in m.graph.node if n.name == node.name))
    vi = helper.make_tensor_value_info(pre, onnx.TensorProto.FLOAT, None)
    vi.type.CopyFrom(m.graph.output[0].type)
    m.graph.output[0].CopyFrom(vi)
    return m, True


def dynamic_batch(model: onnx.ModelProto, ctx: PassContext):
    """Replace a fixed batch of 1 by a symbolic one; Reshapes to [1, ...] become [-1, ...].

    The caller verifies the result numerically and falls back to one-image runs if it differs.
    """
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    if not dims or not dims[0].HasField("dim_value") or dims[0].dim_value != 1:
        return model, False
    m = copy_model(model)
    for vi in list(m.graph.input[:1]) + list(m.graph.output):
        d = vi.type.tensor_type.shape.dim
        if d and d[0].HasField("dim_value") and d[0].dim_value == 1:
            d[0].Clear()
            d[0].dim_param = "batch"
    del m.graph.value_info[:]
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    data_tensors = _data_dependent(m)
    for n in m.graph.node:
        if n.op_type == "Reshape" and n.input[0] in data_tensors and n.input[1] in inits:
            shape = inits[n.input[1]].copy()
            if not shape.size or shape[0] != 1:
                continue
            if -1 not in shape[1:]:
                shape[0] = -1
            elif 0 not in shape and attr(n, "allowzero", 0) == 0:
                shape[0] = 0  # [1, -1] -> [0, -1]: copy the batch dim, keep the inferred one
            else:
                continue
            new = _unique(m, n.input[1] + "_dyn")
            m.graph.initializer.append(numpy_helper.from_array(shape.astype(np.int64), new))
            n.input[1] = new
    _remove_unused_initializers(m)
    return m, True


def _data_dependent(model: onnx.ModelProto) -> set[str]:
    live = {i.name for i in model.graph.input}
    for n in model.graph.node:
        if any(i in live for i in n.input):
            live.update(n.output)
    return live


def set_ir_version(model: onnx.ModelProto, ir_version: int) -> onnx.ModelProto:
    m = copy_model(model)
    m.ir_version = ir_version
    return m


def explicit_pads(model: onnx.ModelProto, ctx: PassContext):
    """auto_pad SAME_UPPER/SAME_LOWER/VALID -> explicit pads (onnx2torch refuses SAME_*)."""
    targets = [n for n in model.graph.node if n.op_type in ("Conv", "MaxPool", "AveragePool")
               and attr(n, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")]
    if not targets:
        return model, False
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:
        raise PassError(f"shape inference failed: {exc}") from None
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    inits = {t.name: t for t in model.graph.initializer}
    m = copy_model(model)
    for n in m.graph.node:
        mode = attr(n, "auto_pad", b"NOTSET")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if n.op_type not in ("Conv", "MaxPool", "AveragePool") or mode == "NOTSET":
            continue
        in_shape = shapes.get(n.input[0])
        if n.op_type == "Conv":
            kernel = attr(n, "kernel_shape") or list(inits[n.input[1]].dims[2:])
        else:
            kernel = attr(n, "kernel_shape")
        if in_shape is None or any(d is None for d in in_shape[2:]):
            raise PassError(f"node {n.name!r}: auto_pad {mode} needs static spatial dims")
        spatial = in_shape[2:]
        strides = attr(n, "strides") or [1] * len(spatial)
        dil = attr(n, "dilations") or [1] * len(spatial)
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dil):
            if mode == "VALID":
                begins.append(0)
                ends.append(0)
                continue
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            begins.append(small if mode == "SAME_UPPER" else big)
            ends.append(big if mode == "SAME_UPPER" else small)
        set_attr(n, "auto_pad", "NOTSET")
        set_attr(n, "pads", begins + ends)
    return m, True


# ---------------------------------------------------------------- the class-score output
_LABEL_PATH = ("Cast", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Flatten", "ArrayFeatureExtractor")
_INT_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.STRING}


def expose_scores(model: onnx.ModelProto, ctx: PassContext):
    """Make the graph end in one float [N, K] class-score output where it ends otherwise.

    - scikit-learn's ZipMap (a sequence of maps) is cut at the probability tensor that feeds it;
    - a label output (ArgMax, then ArrayFeatureExtractor/Cast/Reshape) is cut before its ArgMax
      when no score output exists, and dropped when one does;
    - scores without a batch axis ([K], [1,1,K], [1,K,1,1], [N,K,1,1]) get a Reshape to [-1, K].
    What was assumed is appended to ``ctx.notes``.
    """
    g = model.graph
    if len(g.output) == 1 and _is_batch_scores(g.output[0]):
        return model, False
    m = copy_model(model)
    prods = producers(m)
    scores: list[tuple[str, str]] = []   # (tensor, why)
    zipmap_classes = None
    for o in m.graph.output:
        node = prods.get(o.name)
        if node is not None and node.op_type == "ZipMap":
            scores.append((node.input[0], f"output {o.name!r} is a ZipMap: cut at its input {node.input[0]!r}"))
            labels = attr(node, "classlabels_int64s") or attr(node, "classlabels_strings") or []
            zipmap_classes = len(labels) or None
        elif o.type.HasField("tensor_type") and o.type.tensor_type.elem_type not in _INT_TYPES:
            scores.append((o.name, ""))
    if not scores:
        for o in m.graph.output:
            src = _argmax_input(o.name, prods)
            if src is not None:
                scores.append((src, f"output {o.name!r} holds labels: cut before its ArgMax at {src!r}"))
    if len(scores) != 1:
        return model, False   # analyse() names the problem
    name, why = scores[0]
    shape = _static_shapes(m).get(name) or None
    if zipmap_classes and (shape is None or len(shape) != 2 or not isinstance(shape[1], int)):
        shape = [_input_batch(m), zipmap_classes]   # ai.onnx.ml ops carry no shapes
    k = _squeezed_classes(shape, _input_batch(m))
    if shape is not None and len(shape) == 2 and k is None and not why:
        return model, False
    notes = [why] if why else []
    if k is not None and not (len(shape) == 2 and shape[1] == k):
        new = _unique(m, name + "_scores")
        target = _unique(m, "scores_shape")
        m.graph.initializer.append(numpy_helper.from_array(np.array([-1, k], np.int64), target))
        m.graph.node.append(helper.make_node("Reshape", [name, target], [new], name=_unique(m, "scores_reshape")))
        notes.append(f"scores {list(shape)} taken as {k} classes per image (reshaped to [N, {k}])")
        name, shape = new, [_input_batch(m), k]
    elem = _elem_type(m, name) or onnx.TensorProto.FLOAT
    out = helper.make_tensor_value_info(name, elem, list(shape) if shape is not None else None)
    del m.graph.output[:]
    m.graph.output.append(out)
    remove_dead_nodes(m)
    ctx.notes.extend(notes)
    return m, True


def _is_batch_scores(o: onnx.ValueInfoProto) -> bool:
    t = o.type.tensor_type if o.type.HasField("tensor_type") else None
    if t is None or t.elem_type in _INT_TYPES or not t.HasField("shape") or len(t.shape.dim) != 2:
        return False
    d = t.shape.dim
    return not (d[0].HasField("dim_value") and d[0].dim_value not in (1,)) and d[1].dim_value >= 2


def _argmax_input(name: str, prods: dict[str, onnx.NodeProto]) -> str | None:
    node = prods.get(name)
    while node is not None and node.op_type in _LABEL_PATH:
        src = node.input[1] if node.op_type == "ArrayFeatureExtractor" else node.input[0]
        node = prods.get(src)
    return node.input[0] if node is not None and node.op_type == "ArgMax" else None


def _input_batch(model: onnx.ModelProto):
    inits = {t.name for t in model.graph.initializer}
    for i in model.graph.input:
        if i.name not in inits:
            d = i.type.tensor_type.shape.dim
            if d and d[0].HasField("dim_value"):
                return d[0].dim_value
            return (d[0].dim_param if d and d[0].dim_param else "N")
    return "N"


def _squeezed_classes(shape, batch) -> int | None:
    """K when a score tensor of this shape holds K >= 2 scores per image in a non-[N, K] form."""
    if not shape or any(d is None or isinstance(d, str) for d in shape[1:]):
        return None
    first = shape[0]
    if len(shape) == 1:
        return first if isinstance(first, int) and first >= 2 and batch == 1 else None
    if isinstance(first, int) and first != 1:
        return None
    rest = [d for d in shape[1:] if d != 1]
    if len(rest) != 1 or rest[0] < 2:
        return None
    return rest[0] if len(shape) > 2 else None


def _elem_type(model: onnx.ModelProto, name: str) -> int | None:
    for vi in list(model.graph.output) + list(model.graph.value_info):
        if vi.name == name and vi.type.HasField("tensor_type"):
            return vi.type.tensor_type.elem_type
    return None


def remove_dead_nodes(m: onnx.ModelProto) -> None:
    """Drop nodes (and initializers) that no graph output depends on; in place."""
    needed = {o.name for o in m.graph.output}
    keep = []
    for n in reversed(m.graph.node):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    if len(keep) != len(m.graph.node):
        del m.graph.node[:]
        m.graph.node.extend(reversed(keep))
        _remove_unused_initializers(m)


# ---------------------------------------------------------------- float16 / double models
NARROW_OR_WIDE = {onnx.TensorProto.FLOAT16: "float16", onnx.TensorProto.BFLOAT16: "bfloat16",
                  onnx.TensorProto.DOUBLE: "float64"}


def compute_in_float32(model: onnx.ModelProto, ctx: PassContext):
    """A float16, bfloat16 or float64 model is handled in float32: its float initializers,
    constants, casts and tensor types become float32 (same names). Write-back casts the trained
    weights to the original initializers' types."""
    inits = initializers(model)
    data = [i for i in model.graph.input if i.name not in inits]
    if len(data) != 1 or data[0].type.tensor_type.elem_type not in NARROW_OR_WIDE:
        return model, False
    kind = NARROW_OR_WIDE[data[0].type.tensor_type.elem_type]
    m = copy_model(model)
    for i, t in enumerate(m.graph.initializer):
        if t.data_type in NARROW_OR_WIDE:
            m.graph.initializer[i].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
    for vi in list(m.graph.input) + list(m.graph.output) + list(m.graph.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type in NARROW_OR_WIDE:
            vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    for n in m.graph.node:
        if n.op_type == "Cast" and attr(n, "to") in NARROW_OR_WIDE:
            set_attr(n, "to", onnx.TensorProto.FLOAT)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type in NARROW_OR_WIDE:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float32), a.t.name))
    ctx.notes.append(f"a {kind} model: computed in float32, weights written back as {kind}")
    return m, True


# ---------------------------------------------------------------- pooling over unit-window axes
def pool_unit_axes(model: onnx.ModelProto, ctx: PassContext):
    """MaxPool/AveragePool over more than 3 spatial axes, where all but at most 3 have a window of
    1 (stride 1, no padding), becomes a pooling over those axes alone: the unit-window axes move
    next to the batch and are folded into it. onnxruntime pools 1-3 axes only; jax2onnx lowers
    `lax.reduce_window` over NHWC this way ([1,1,N,H,W,C], kernel [1,2,2,1])."""
    if not any(n.op_type in ("MaxPool", "AveragePool") and len(attr(n, "kernel_shape") or []) > 3
               for n in model.graph.node):
        return model, False   # shape inference only where a candidate exists
    shapes = _static_shapes(model)
    m = copy_model(model)
    modified = False
    for n in list(m.graph.node):
        kernel = list(attr(n, "kernel_shape") or [])
        if (n.op_type not in ("MaxPool", "AveragePool") or len(n.output) != 1 or len(kernel) <= 3
                or attr(n, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET")):
            continue
        k = len(kernel)
        strides = list(attr(n, "strides") or [1] * k)
        pads = list(attr(n, "pads") or [0] * (2 * k))
        pooled = [i for i in range(k) if kernel[i] != 1 or strides[i] != 1 or pads[i] or pads[k + i]]
        shape = shapes.get(n.input[0])
        if not pooled or len(pooled) > 3 or shape is None or any(
                not isinstance(shape[2 + i], int) for i in pooled):
            continue
        dil = list(attr(n, "dilations") or [1] * k)
        sizes = [shape[2 + i] for i in pooled]
        out_sizes = _pooled_sizes(sizes, [kernel[i] for i in pooled], [strides[i] for i in pooled],
                                  [pads[i] for i in pooled], [pads[k + i] for i in pooled],
                                  [dil[i] for i in pooled], attr(n, "ceil_mode", 0))
        idx = list(m.graph.node).index(n)
        nodes = _fold_unit_axes(m, n, pooled, sizes, out_sizes)
        m.graph.node.remove(n)
        for j, node in enumerate(nodes):
            m.graph.node.insert(idx + j, node)
        ctx.notes.append(f"{n.op_type} {n.name!r} pools {len(pooled)} of its {k} axes: the unit-window axes "
                         "were folded into the batch")
        modified = True
    return (m, True) if modified else (model, False)


def _fold_unit_axes(m: onnx.ModelProto, n: onnx.NodeProto, pooled: list[int], sizes: list[int],
                    out_sizes: list[int]) -> list[onnx.NodeProto]:
    """Nodes computing pooling node n over its `pooled` axes only: Transpose the unit-window axes
    next to the batch, Reshape them into it, pool, Reshape and Transpose back (initializers added
    to m)."""
    k = len(attr(n, "kernel_shape"))
    unit = [i for i in range(k) if i not in pooled]
    perm = [0, 1, *(2 + i for i in unit), *(2 + i for i in pooled)]
    t = lambda suffix: _unique(m, f"{n.name}_{suffix}")   # noqa: E731
    names = {x: t(x) for x in ("moved", "folded", "pooled", "lead_all", "lead", "back_shape", "unfolded",
                               "fold_shape", "lead_idx", "tail")}
    m.graph.initializer.extend([
        numpy_helper.from_array(np.array([-1, 1, *sizes], np.int64), names["fold_shape"]),
        numpy_helper.from_array(np.arange(2 + len(unit), dtype=np.int64), names["lead_idx"]),
        numpy_helper.from_array(np.array(out_sizes, np.int64), names["tail"])])
    pool = helper.make_node(n.op_type, [names["folded"]], [names["pooled"]], name=n.name)
    for a in n.attribute:
        if a.name in ("kernel_shape", "strides", "pads", "dilations"):
            vals = helper.get_attribute_value(a)
            keep = [vals[i] for i in pooled] + ([vals[k + i] for i in pooled] if a.name == "pads" else [])
            pool.attribute.append(helper.make_attribute(a.name, keep))
        else:
            pool.attribute.append(a)
    return [
        helper.make_node("Transpose", [n.input[0]], [names["moved"]], perm=perm, name=t("move")),
        helper.make_node("Reshape", [names["moved"], names["fold_shape"]], [names["folded"]], name=t("fold")),
        pool,
        helper.make_node("Shape", [names["moved"]], [names["lead_all"]], name=t("shape")),
        helper.make_node("Gather", [names["lead_all"], names["lead_idx"]], [names["lead"]], axis=0, name=t("lead")),
        helper.make_node("Concat", [names["lead"], names["tail"]], [names["back_shape"]], axis=0, name=t("concat")),
        helper.make_node("Reshape", [names["pooled"], names["back_shape"]], [names["unfolded"]], name=t("unfold")),
        helper.make_node("Transpose", [names["unfolded"]], [n.output[0]], perm=[int(v) for v in np.argsort(perm)],
                         name=t("back")),
    ]


def _pooled_sizes(sizes, kernel, strides, begin, end, dil, ceil_mode) -> list[int]:
    out = []
    for size, kk, st, b, e, d in zip(sizes, kernel, strides, begin, end, dil):
        span = size + b + e - ((kk - 1) * d + 1)
        steps = -(-span // st) if ceil_mode else span // st
        if ceil_mode and steps * st >= size + b:   # the last window must start inside the input
            steps -= 1
        out.append(steps + 1)
    return out



# ---------------------------------------------------------------- old opsets
# attributes later versions of an op dropped without changing what the op computes
_LEGACY_ATTRIBUTES = {"is_test": None, "consumed_inputs": None, "spatial": 1}
# the oldest ai.onnx opset onnxruntime runs
ORT_MIN_OPSET = 7


def drop_legacy_attributes(model: onnx.ModelProto, ctx: PassContext):
    """Old exporters (CNTK) keep `is_test`, `consumed_inputs` or `spatial=1` on ops whose schema at
    the model's opset no longer has them; onnxruntime refuses such nodes, though the attributes
    change nothing there. Dropped; any other unknown attribute is left for the runtime to name."""
    if not any(a.name in _LEGACY_ATTRIBUTES for n in model.graph.node for a in n.attribute):
        return model, False
    version = opset(model)
    m = copy_model(model)
    dropped = []
    for n in m.graph.node:
        if n.domain not in ("", "ai.onnx") or not any(a.name in _LEGACY_ATTRIBUTES for a in n.attribute):
            continue
        try:
            known = set(onnx.defs.get_schema(n.op_type, version, "").attributes)
        except Exception:
            continue
        for a in list(n.attribute):
            keep_if = _LEGACY_ATTRIBUTES.get(a.name, "no")
            if a.name in _LEGACY_ATTRIBUTES and a.name not in known and (
                    keep_if is None or helper.get_attribute_value(a) == keep_if):
                n.attribute.remove(a)
                dropped.append(f"{n.op_type}.{a.name}")
    if not dropped:
        return model, False
    ctx.notes.append(f"attributes unknown at opset {version} dropped: {', '.join(sorted(set(dropped)))}")
    return m, True


def upgrade_old_opset(model: onnx.ModelProto, ctx: PassContext):
    """A graph older than onnxruntime's oldest opset is run at that opset (onnx.version_converter);
    the user's graph, and the model written back, keep their own opset."""
    version = opset(model)
    if version >= ORT_MIN_OPSET:
        return model, False
    up = upgrade_opset(model, ORT_MIN_OPSET)
    ctx.notes.append(f"opset {version} upgraded to {ORT_MIN_OPSET} by onnx.version_converter "
                     "(onnxruntime runs opset 7 and later)")
    return up, True


# ---------------------------------------------------------------- opset upgrade for conversion
def _static_dims(model: onnx.ModelProto) -> onnx.ModelProto:
    """Symbolic dims of the graph inputs and outputs set to 1; no value_info."""
    m = copy_model(model)
    del m.graph.value_info[:]
    for vi in list(m.graph.input) + list(m.graph.output):
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = 1
    return m


def _restore_dims(up: onnx.ModelProto, src: onnx.ModelProto) -> onnx.ModelProto:
    """The graph input and output types of src put back on a graph converted with static dims."""
    types = {vi.name: vi.type for vi in list(src.graph.input) + list(src.graph.output)}
    del up.graph.value_info[:]
    for vi in list(up.graph.input) + list(up.graph.output):
        if vi.name in types:
            vi.type.CopyFrom(types[vi.name])
    return up

def upgrade_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """The graph at ai.onnx opset ``target`` through onnx.version_converter.

    Initializers keep their names and values (checked), so weights trained on the upgraded
    graph still belong to the original initializers; nodes the converter adds are named.
    """
    src = model
    if src.ir_version < 4:  # IR 3 wants every initializer listed as an input too
        src = set_ir_version(model, 4)
    try:
        try:
            up = onnx.version_converter.convert_version(src, target)
        except Exception:  # some adapters (opset 6 -> 7 broadcasting) want static dims
            up = _restore_dims(onnx.version_converter.convert_version(_static_dims(src), target), src)
    except Exception as exc:
        raise PassError(f"onnx cannot upgrade opset {opset(model)} to {target}: "
                        f"{(str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]}") from None
    before = initializers(model)
    for t in up.graph.initializer:
        old = before.get(t.name)
        if old is not None and numpy_helper.to_array(old).tobytes() != numpy_helper.to_array(t).tobytes():
            raise PassError(f"opset upgrade to {target} changed initializer {t.name!r}")
    wanted = helper.find_min_ir_version_for([helper.make_opsetid("", target)])
    up.ir_version = max(model.ir_version, min(wanted, 10))
    up, _ = name_graph_and_nodes(up, PassContext())
    up, _ = lift_constants(up, PassContext())
    return up
