"""onnxruntime sessions: provider choice and batched execution."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from audit.errors import AuditError

log = logging.getLogger(__name__)
# onnxruntime's own warnings (shape-merge notes on loading exported graphs) are not the
# user's concern; errors still surface as exceptions
ort.set_default_logger_severity(3)
DEVICES = ("auto", "cpu", "cuda")


@functools.lru_cache(maxsize=1)
def cuda_usable() -> bool:
    """True only when the CUDA provider is built in *and* a CUDA device is actually present.

    Asking ORT for CUDA on a machine without a GPU prints pages of loader errors, so we
    check for a device first (through torch, which answers quietly).
    """
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def providers(device: str = "auto") -> list[str]:
    if device not in DEVICES:
        raise AuditError(f"unknown device {device!r} (use auto, cpu or cuda)")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if cuda_usable():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda":
        raise AuditError("--device cuda: no usable CUDA device/onnxruntime CUDA provider here")
    return ["CPUExecutionProvider"]


def check_device(device: str = "auto") -> None:
    """Refuse an unknown device, or cuda where neither onnxruntime nor torch can use one."""
    providers(device)
    if device == "cuda":
        torch_device(device)


def torch_device(device: str = "auto") -> str:
    import torch

    if device == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if device == "cuda":
        raise AuditError("--device cuda: torch sees no CUDA device here")
    return "cpu"


def make_session(model: onnx.ModelProto, device: str = "auto", *, optimize: bool = True,
                 threads: int | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 4  # failures surface as exceptions, not log lines on stderr
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        so.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(model.SerializeToString(), so, providers=providers(device))
    except AuditError:
        raise
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AuditError(f"onnxruntime cannot load the model: {msg[:300]}") from None


class Runner:
    """Run a session over a data set in batches; one image at a time for fixed-batch graphs."""

    def __init__(self, session: ort.InferenceSession, input_name: str, *,
                 fixed_batch: int | None = None, batch_size: int = 256,
                 dtype: np.dtype = np.float32) -> None:
        self.session = session
        self.input_name = input_name
        self.fixed_batch = fixed_batch
        self.batch_size = fixed_batch or batch_size
        self.dtype = dtype

    def run(self, x: np.ndarray, outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        """All outputs for the whole x, concatenated over batches."""
        parts: list[list[np.ndarray]] = []
        for res in self.iter_run(x, outputs):
            parts.append(res)
        return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]

    def iter_run(self, x: np.ndarray, outputs: Sequence[str] | None = None
                 ) -> Iterator[list[np.ndarray]]:
        names = list(outputs) if outputs else None
        for start in range(0, len(x), self.batch_size):
            xb = np.ascontiguousarray(x[start:start + self.batch_size], dtype=self.dtype)
            if self.fixed_batch and len(xb) != self.fixed_batch:
                pad = np.repeat(xb[-1:], self.fixed_batch - len(xb), axis=0)
                res = self.session.run(names, {self.input_name: np.concatenate([xb, pad])})
                yield [r[: len(xb)] for r in res]
            else:
                yield self.session.run(names, {self.input_name: xb})
