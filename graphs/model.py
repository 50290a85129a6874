"""AuditModel: an ONNX classifier loaded, analysed, normalised and ready to run."""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from audit.errors import AuditError, ModelError
from audit.graphs import passes as P
from audit.graphs.info import ModelInfo, analyse
from audit.graphs.io import MAX_IR_VERSION, load_model
from audit.graphs.layout import to_layout_numpy
from audit.graphs.runtime import Runner, make_session, providers

log = logging.getLogger(__name__)

# the user's graph as the tools see it: runnable, with one [N, K] class-score output
INTERFACE = (P.remove_initializer_inputs, P.upgrade_old_opset, P.drop_legacy_attributes, P.pool_unit_axes,
             P.expose_scores, P.compute_in_float32)
NORMALISE = (
    P.remove_initializer_inputs,
    P.name_graph_and_nodes,
    P.dedupe_outputs,
    P.toposort,
    P.lift_constants,
    P.fold_initializer_ops,
    P.explicit_pads,
    P.fuse_conv_add,
    P.fuse_matmul_add,
    P.gemm_bias,
    P.reshape_allowzero,
)
PARITY_ATOL = 1e-4


@dataclass
class AuditModel:
    """The user's model plus a functionally identical graph our tools can work on."""

    original: onnx.ModelProto
    info: ModelInfo
    scored: onnx.ModelProto            # original, cut to its one [N, K] class-score output
    normalised: onnx.ModelProto
    ctx: P.PassContext
    fixed_batch: int | None = None     # set when the batch could not be made dynamic
    path: Path | None = None
    device: str = "auto"
    _sessions: dict = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "auto") -> AuditModel:
        model = load_model(path)
        return cls.from_proto(model, device=device, path=Path(path), where=str(path))

    @classmethod
    def from_proto(cls, model: onnx.ModelProto, *, device: str = "auto", path: Path | None = None,
                   where: str = "model") -> AuditModel:
        ctx = P.PassContext()
        scored, _ = P.run_passes(model, INTERFACE, ctx)
        # the user's own opset and IR version, not those of an upgraded copy
        info = dataclasses.replace(analyse(scored, where), opset=P.opset(model), ir_version=model.ir_version)
        norm, ctx = P.run_passes(scored, NORMALISE, ctx)
        fixed = info.fixed_batch
        if fixed == 1:
            dyn, _ = P.dynamic_batch(norm, ctx)
            if _same_outputs(norm, dyn, info, device, batch=1):
                norm, fixed = dyn, None
                ctx.applied.append("dynamic_batch")
            else:
                log.info("batch stays fixed at 1: the rewritten graph differs")
        elif fixed is not None:
            raise ModelError(f"{where}: fixed batch size {fixed} is not supported (only 1 or dynamic)")
        am = cls(original=model, info=info, scored=scored, normalised=norm, ctx=ctx, fixed_batch=fixed, path=path,
                 device=device)
        am._check_normalisation(where)
        return am

    # ------------------------------------------------------------------ running
    def session(self, which: str = "normalised", *, optimize: bool = True):
        key = (which, optimize)
        if key not in self._sessions:
            proto = self.normalised if which == "normalised" else self.scored
            self._sessions[key] = make_session(_runnable(proto), self.device, optimize=optimize)
        return self._sessions[key]

    def runner(self, which: str = "normalised", *, batch_size: int = 256,
               optimize: bool = True, session=None) -> Runner:
        fixed = self.fixed_batch if which == "normalised" else self.info.fixed_batch
        return Runner(session or self.session(which, optimize=optimize), self.info.input_name,
                      fixed_batch=fixed, batch_size=batch_size)

    def model_input(self, x01: np.ndarray, preprocess) -> np.ndarray:
        """Canonical NCHW [0,1] images -> the model's input tensor."""
        return to_layout_numpy(preprocess.apply_numpy(x01), self.info.layout).astype(np.float32)

    def scores(self, x01: np.ndarray, preprocess, *, batch_size: int = 256) -> np.ndarray:
        x = self.model_input(x01, preprocess)
        return self.runner(batch_size=batch_size).run(x, [self.info.output_name])[0]

    def predict(self, x01: np.ndarray, preprocess, *, batch_size: int = 256) -> np.ndarray:
        return self.scores(x01, preprocess, batch_size=batch_size).argmax(axis=1)

    def accuracy(self, x01: np.ndarray, y: np.ndarray, preprocess) -> float:
        if len(y) == 0:
            return float("nan")
        return float((self.predict(x01, preprocess) == y).mean())

    # ------------------------------------------------------------------ checks
    def _check_normalisation(self, where: str) -> None:
        if not set(self.ctx.applied) - {"name_graph_and_nodes", *(p.__name__ for p in INTERFACE)}:
            return
        if not _same_outputs(self.scored, self.normalised, self.info, self.device,
                             batch=self.info.fixed_batch or 3, fixed=self.fixed_batch):
            _explain_bad_outputs(self.scored, self.info, self.device, where)
            raise ModelError(f"{where}: graph normalisation ({', '.join(self.ctx.applied)}) "
                             "changed the model's outputs")


def _runnable(model: onnx.ModelProto) -> onnx.ModelProto:
    if model.ir_version > MAX_IR_VERSION:
        model = P.set_ir_version(model, MAX_IR_VERSION)
    return model


def _explain_bad_outputs(model: onnx.ModelProto, info: ModelInfo, device: str, where: str) -> None:
    """Raise ModelError naming what is wrong when the model itself gives no usable outputs:
    it does not run under onnxruntime, or its outputs are NaN or infinite on random inputs."""
    x = random_input(info, max(info.fixed_batch or 3, 3))
    try:
        session = make_session(_runnable(model), device)
        out = Runner(session, info.input_name, fixed_batch=info.fixed_batch).run(x, [info.output_name])[0]
    except AuditError as exc:
        raise ModelError(f"{where}: {exc}") from None
    except Exception as exc:
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelError(f"{where}: onnxruntime cannot run the model: {text}") from None
    out = np.asarray(out)
    if out.dtype.kind == "f" and np.isnan(out).any():
        raise ModelError(f"{where}: the model's outputs are NaN on random inputs")
    if out.dtype.kind == "f" and not np.isfinite(out).all():
        raise ModelError(f"{where}: the model's outputs are infinite on random inputs")


def random_input(info: ModelInfo, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x01 = rng.random((n, info.channels, info.height, info.width), dtype=np.float32)
    return to_layout_numpy(x01, info.layout).astype(np.float32)


def _same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, info: ModelInfo, device: str, *,
                  batch: int, fixed: int | None = None) -> bool:
    """Run both graphs on the same random images (a one image at a time when it is fixed).

    An unusable device is an error of its own (AuditError), never a difference."""
    providers(device)
    try:
        x = random_input(info, max(batch, 3))
        sa = make_session(_runnable(a), device)
        sb = make_session(_runnable(b), device)
        ra = Runner(sa, info.input_name, fixed_batch=info.fixed_batch).run(x, [info.output_name])[0]
        rb = Runner(sb, info.input_name, fixed_batch=fixed).run(x, [info.output_name])[0]
    except Exception as exc:
        log.debug("comparison failed: %s", exc)
        return False
    return ra.shape == rb.shape and bool(np.allclose(ra, rb, atol=PARITY_ATOL, rtol=1e-4))
