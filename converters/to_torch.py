"""ONNX -> torch through onnx2torch, parity-checked, with a map from parameters back to ONNX."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx2torch import convert as o2t_convert
from onnx2torch.onnx_graph import OnnxGraph
from torch import nn

from audit.converters.registry import missing_converters, register_aliases
from audit.errors import ConversionError
from audit.graphs import passes as P
from audit.graphs.model import PARITY_ATOL, AuditModel, _runnable, _same_outputs, random_input
from audit.graphs.runtime import Runner, make_session

log = logging.getLogger(__name__)


@dataclass
class ParamBinding:
    """A torch tensor and the normalised-graph initializer it came from."""

    module: str                 # dotted path inside the GraphModule
    attr: str                   # weight | bias | running_mean | running_var
    init: str                   # initializer name in TorchModel.graph
    to_onnx: Callable[[np.ndarray], np.ndarray]


@dataclass
class TorchModel:
    module: nn.Module           # returns class scores before any final (Log)Softmax
    graph: onnx.ModelProto      # the ONNX graph the module mirrors (logits output)
    source: AuditModel
    bindings: list[ParamBinding]
    node_modules: dict[str, str]  # ONNX node name -> module path
    parity_max_abs: float = float("nan")
    # max |ORT - torch| / max(1, max |logit|): float32 cannot resolve 1e-4 on logits of 1e4
    parity_rel: float = float("nan")
    channels_last: bool = False   # 4-D weights stored channels-last (see to_torch)
    notes: list[str] = field(default_factory=list)   # rewrites made for conversion only

    def submodule(self, node_name: str) -> nn.Module:
        return self.module.get_submodule(self.node_modules[node_name])

    def layer_module(self, node_name: str) -> nn.Module | None:
        """The nn.Conv*/nn.Linear holding a probe layer's weights, if it is trainable."""
        mod = self.submodule(node_name)
        for m in mod.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                return m
        return None

    def logits(self, x_model: torch.Tensor) -> torch.Tensor:
        out = self.module(x_model)
        return out[0] if isinstance(out, (tuple, list)) else out


def logits_graph(am: AuditModel) -> onnx.ModelProto:
    """The normalised graph with the class output only, before a final Softmax/LogSoftmax."""
    m = P.copy_model(am.normalised)
    keep = [o for o in m.graph.output if o.name == am.info.output_name]
    del m.graph.output[:]
    m.graph.output.extend(keep)
    m, _ = P.strip_output_softmax(m, P.PassContext())
    P.remove_dead_nodes(m)  # e.g. skl2onnx's label branch (ArgMax, ai.onnx.ml ops)
    if m.ir_version < 4:  # IR 3 requires initializers listed as inputs; we removed them
        m.ir_version = 4
    return m


# ai.onnx opsets tried, in order, for a graph whose op versions onnx2torch has no converter for
UPGRADE_OPSETS = (13, 17, 11)


def convertible_graph(am: AuditModel) -> tuple[onnx.ModelProto, list[str]]:
    """The logits graph, upgraded to a newer opset when that is what conversion needs.

    Old exports (opset 7-8: MaxPool-1, BatchNormalization-6, Upsample) use op versions onnx2torch
    does not register. onnx.version_converter rewrites them; the initializers keep their names,
    so trained weights go back into the original graph, which keeps its own opset.
    """
    graph = logits_graph(am)
    missing = missing_converters(graph)
    if not missing:
        return graph, []
    tried = []
    for target in (t for t in UPGRADE_OPSETS if t > P.opset(graph)):
        try:
            up = P.upgrade_opset(graph, target)
        except P.PassError as exc:
            tried.append(str(exc))
            continue
        if missing_converters(up):
            continue
        scores = dataclasses.replace(am.info, output_name=graph.graph.output[0].name)
        if not _same_outputs(graph, up, scores, am.device, batch=3):
            tried.append(f"the graph upgraded to opset {target} computes other scores")
            continue
        return up, [f"opset {P.opset(graph)} upgraded to {target} by onnx.version_converter for the "
                    "conversion to torch"]
    raise ConversionError(f"onnx2torch cannot convert {missing[0]}"
                          + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
                          + (f"; {tried[0]}" if tried else ""))


def to_torch(am: AuditModel, x_check: np.ndarray | None = None, *, atol: float = PARITY_ATOL,
             check: bool = True, channels_last: bool = True,
             device: str | torch.device | None = None) -> TorchModel:
    """Convert and check max |ORT - torch| <= atol on x_check (model-input tensors).

    channels_last stores 4-D weights channels-last where the module computes the same logits
    with them: the module is built on the CPU, whose oneDNN convolutions run ~20% faster in
    that layout (Neural Cleanse on the Table-5 MNIST model: docs/method.md).

    The conversion is built and parity-checked on the CPU (a GPU's TF32 convolutions would
    blur the check), then the module moves to device (None: it stays on the CPU).
    """
    register_aliases()
    if am.fixed_batch:
        raise ConversionError("the graph's batch size is fixed and could not be made dynamic")
    graph, notes = convertible_graph(am)
    try:
        # onnx2torch warns where its modules might differ from ONNX; the parity check below
        # measures whether they do, so the warnings go to the debug log, not to stderr
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = o2t_convert(_runnable(graph))
        for w in caught:
            log.debug("onnx2torch: %s", w.message)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(f"onnx2torch failed: {msg[:300]}") from None
    module.eval()
    node_modules = {n.name: OnnxGraph.generate_node_name(n).replace("/", "/") for n in graph.graph.node}
    node_modules = {k: v for k, v in node_modules.items() if _has_submodule(module, v)}
    tm = TorchModel(module=module, graph=graph, source=am, bindings=[], node_modules=node_modules, notes=notes)
    tm.bindings = _bind(tm)
    for b in tm.bindings:  # onnx2torch leaves some weights as non-leaf/non-contiguous views
        t = getattr(tm.module.get_submodule(b.module), b.attr)
        if isinstance(t, nn.Parameter):
            t.data = t.data.contiguous().clone()
    if channels_last:
        _try_channels_last(tm, x_check if x_check is not None else random_input(am.info, 4))
    if check:
        x = x_check if x_check is not None else random_input(am.info, 8)
        tm.parity_max_abs, scale = parity_with_scale(tm, x)
        tm.parity_rel = tm.parity_max_abs / max(1.0, scale)
        if not tm.parity_rel <= atol:
            node = first_divergence(tm, x[:4], atol)
            raise ConversionError(
                f"torch and onnxruntime disagree by {tm.parity_max_abs:.3g} on logits of "
                f"magnitude {scale:.3g} (> {atol:g} relative)"
                + (f"; first diverging node: {node}" if node else ""), node=node)
    if device is not None:
        tm.module.to(device)
    return tm


def _try_channels_last(tm: TorchModel, x: np.ndarray) -> bool:
    """Switch the module's 4-D parameters to channels-last if it has 2-D convolutions and
    computes the same logits that way; otherwise leave it as it is."""
    if not any(isinstance(m, nn.Conv2d) for m in tm.module.modules()):
        return False
    ref = torch_logits(tm, x[:8])
    tm.module.to(memory_format=torch.channels_last)
    try:
        out = torch_logits(tm, x[:8])
        ok = out.shape == ref.shape and bool(
            np.max(np.abs(out - ref), initial=0.0) <= 1e-5 * max(1.0, float(np.abs(ref).max(initial=0.0))))
    except Exception as exc:  # an op of the graph that needs contiguous NCHW tensors
        log.debug("channels-last forward failed: %s", exc)
        ok = False
    if not ok:
        for t in [*tm.module.parameters(), *tm.module.buffers()]:
            t.data = t.data.contiguous()
    tm.channels_last = ok
    return ok


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


def _bind(tm: TorchModel) -> list[ParamBinding]:
    out: list[ParamBinding] = []
    for node in tm.graph.graph.node:
        path = tm.node_modules.get(node.name)
        if path is None:
            continue
        mod = tm.module.get_submodule(path)
        if node.op_type == "Conv":
            sub = next((n for n, m in mod.named_modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
            if sub is None:
                continue
            full = f"{path}.{sub}" if sub else path
            out.append(ParamBinding(full, "weight", node.input[1], _same))
            if len(node.input) > 2 and node.input[2]:
                out.append(ParamBinding(full, "bias", node.input[2], _same))
        elif node.op_type == "MatMul" and isinstance(mod, nn.Linear):   # audit.converters.ops.matmul
            out.append(ParamBinding(path, "weight", node.input[1], _transpose))
        elif node.op_type == "Gemm" and isinstance(mod, nn.Linear):
            alpha = P.attr(node, "alpha", 1.0)
            beta = P.attr(node, "beta", 1.0)
            trans_b = P.attr(node, "transB", 0)
            out.append(ParamBinding(path, "weight", node.input[1],
                                    lambda w, a=alpha, t=trans_b: (w / a) if t else (w / a).T))
            if len(node.input) > 2 and node.input[2]:
                out.append(ParamBinding(path, "bias", node.input[2], lambda b, be=beta: b / be))
        elif node.op_type == "BatchNormalization" and isinstance(mod, nn.modules.batchnorm._BatchNorm):
            for attr_name, idx in (("weight", 1), ("bias", 2), ("running_mean", 3), ("running_var", 4)):
                out.append(ParamBinding(path, attr_name, node.input[idx], _same))
    return out


def _same(v: np.ndarray) -> np.ndarray:
    return v


def _transpose(v: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(v.T)


def ort_logits(tm: TorchModel, x: np.ndarray, *, optimize: bool = True) -> np.ndarray:
    sess = make_session(_runnable(tm.graph), tm.source.device, optimize=optimize)
    return Runner(sess, tm.source.info.input_name).run(x)[0]


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for one with neither."""
    return next((t.device for t in (*module.parameters(), *module.buffers())), torch.device("cpu"))


@torch.no_grad()
def torch_logits(tm: TorchModel, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The module's logits on x (model-input tensors), run where the module is; numpy on the CPU."""
    was = tm.module.training
    tm.module.eval()
    dev = module_device(tm.module)
    outs = [tm.logits(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])).to(dev)).cpu().numpy()
            for i in range(0, len(x), batch_size)]
    tm.module.train(was)
    return np.concatenate(outs)


def parity_with_scale(tm: TorchModel, x: np.ndarray) -> tuple[float, float]:
    """(max |ORT - torch|, max |ORT logit|) on x."""
    a = ort_logits(tm, x)
    b = torch_logits(tm, x)
    if a.shape != b.shape:
        return float("inf"), 0.0
    if not a.size:
        return 0.0, 0.0
    return float(np.max(np.abs(a - b))), float(np.max(np.abs(a)))


def first_divergence(tm: TorchModel, x: np.ndarray, atol: float) -> str | None:
    """Name the first node (in graph order) whose torch output differs from onnxruntime's."""
    try:
        g = P.copy_model(tm.graph)
        have = {o.name for o in g.graph.output}
        for n in g.graph.node:
            for o in n.output:
                if o and o not in have:
                    g.graph.output.append(onnx.ValueInfoProto(name=o))
                    have.add(o)
        sess = make_session(_runnable(g), tm.source.device, optimize=False)
        names = [o.name for o in sess.get_outputs()]
        ref = dict(zip(names, sess.run(None, {tm.source.info.input_name: x})))
        captured: dict[str, np.ndarray] = {}
        hooks = []
        by_path = {v: k for k, v in tm.node_modules.items()}
        for path, name in by_path.items():
            mod = tm.module.get_submodule(path)
            hooks.append(mod.register_forward_hook(
                lambda _m, _i, out, name=name: captured.__setitem__(
                    name, (out[0] if isinstance(out, (tuple, list)) else out).detach().cpu().numpy())))
        try:
            torch_logits(tm, x)
        finally:
            for h in hooks:
                h.remove()
        for n in tm.graph.graph.node:
            if n.name in captured and n.output[0] in ref:
                a, b = ref[n.output[0]], captured[n.name]
                if a.shape != b.shape or np.max(np.abs(a.astype(np.float64) - b)) > atol:
                    return f"{n.name} ({n.op_type})"
    except Exception as exc:  # diagnosis is best effort
        log.debug("divergence search failed: %s", exc)
    return None
