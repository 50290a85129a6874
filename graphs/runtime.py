"""onnxruntime sessions: provider choice and batched execution."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from audit.errors import AuditError

log = logging.getLogger(__name__)
# onnxruntime's own warnings (shape-merge notes on loading exported graphs) are not the
# user's concern; errors still surface as exceptions
ort.set_default_logger_severity(3)
DEVICES = ("auto", "cpu", "cuda", "cuda:N")
_DEVICE_RE = re.compile(r"(auto|cpu|cuda)(?::(\d+))?")


def parse_device(device: str) -> str:
    """The --device value checked for form: auto, cpu, cuda or cuda:N (N a device number).
    Whether such a device is present is resolve_device's question."""
    m = _DEVICE_RE.fullmatch(str(device).strip().lower())
    if not m or (m.group(2) is not None and m.group(1) != "cuda"):
        raise AuditError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)")
    return m.group(0)


@dataclass(frozen=True)
class Device:
    """Where a --device value runs: torch's device and onnxruntime's providers."""

    name: str                     # the value as given (normalised): auto, cpu, cuda, cuda:N
    torch: Any                    # torch.device
    providers: list = field(default_factory=list)   # for ort.InferenceSession(providers=...)


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


def _torch_cuda_count() -> int:
    try:
        import torch

        return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0
    except Exception:
        return 0


def resolve_device(device: str = "auto") -> Device:
    """The one place a --device value becomes a torch device and onnxruntime providers.

    cpu: both on the CPU. cuda / cuda:N: both on that CUDA device (onnxruntime's CUDA
    provider with device_id N, the CPU provider behind it for ops CUDA lacks); an AuditError
    of one line where onnxruntime or torch cannot use it. auto: CUDA device 0 for each
    of them that can use one, else the CPU.
    """
    import torch

    name, provs = _providers(device)
    if name == "cpu" or (name == "auto" and not _torch_cuda_count()):
        return Device(name, torch.device("cpu"), provs)
    if name in ("auto", "cuda"):
        return Device(name, torch.device("cuda"), provs)
    return Device(name, torch.device("cuda", int(name.split(":")[1])), provs)


def _providers(device: str) -> tuple[str, list]:
    """(normalised name, onnxruntime providers); torch is only asked where CUDA is."""
    name = parse_device(device)
    cpu = ["CPUExecutionProvider"]
    if name == "cpu":
        return name, cpu
    if name == "auto":
        return name, ["CUDAExecutionProvider", *cpu] if cuda_usable() else cpu
    if not cuda_usable():
        raise AuditError(f"--device {name}: no usable CUDA device here (onnxruntime's CUDA "
                         "provider and torch must both see one)")
    if name == "cuda":
        return name, ["CUDAExecutionProvider", *cpu]
    index, count = int(name.split(":")[1]), _torch_cuda_count()
    if index >= count:
        raise AuditError(f"--device {name}: this machine has {count} CUDA device(s) "
                         f"(cuda:0..cuda:{count - 1})")
    return name, [("CUDAExecutionProvider", {"device_id": index}), *cpu]


def providers(device: str = "auto") -> list:
    return _providers(device)[1]


def check_device(device: str = "auto") -> None:
    """Refuse an unknown device, or a CUDA one neither onnxruntime nor torch can use."""
    resolve_device(device)


def torch_device(device: str = "auto"):
    """The torch.device a --device value runs torch on (see resolve_device)."""
    return resolve_device(device).torch


def _limited(provs: list) -> list:
    """The CUDA provider with CUDA_MEM_LIMIT as its gpu_mem_limit, where one is set."""
    if CUDA_MEM_LIMIT is None:
        return provs
    out = []
    for p in provs:
        name, opts = (p, {}) if isinstance(p, str) else p
        out.append((name, {**opts, "gpu_mem_limit": CUDA_MEM_LIMIT}) if name == "CUDAExecutionProvider" else p)
    return out


#: a process's onnxruntime budget, set by the process that runs scan jobs (audit.scan.runner):
#: intra-op threads of every session (None: onnxruntime's default), and the CUDA provider's
#: gpu_mem_limit in bytes (None: no limit)
SESSION_THREADS: int | None = None
CUDA_MEM_LIMIT: int | None = None


def make_session(model: onnx.ModelProto, device: str = "auto", *, optimize: bool = True,
                 threads: int | None = None) -> ort.InferenceSession:
    threads = threads or SESSION_THREADS
    so = ort.SessionOptions()
    so.log_severity_level = 4  # failures surface as exceptions, not log lines on stderr
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads:
        so.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(model.SerializeToString(), so, providers=_limited(providers(device)))
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
