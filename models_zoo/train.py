"""Training, ONNX export and onnxruntime evaluation for the zoo."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from audit.data import Preprocess
from audit.errors import AuditError
from audit.paths import atomic_path

__all__ = ["Recipe", "evaluate_onnx", "export_onnx", "onnx_logits", "train_classifier"]

log = logging.getLogger(__name__)
MAX_IR_VERSION = 10
EXPORT_ATOL = 1e-4


@dataclass(frozen=True)
class Recipe:
    """How a zoo model is trained (Adam, lr 1e-3)."""

    epochs: int
    batch_size: int
    n_trigger: int            # trigger images for content / noise / unrelated (Adi: its set)
    trigger_repeats: int      # how often the trigger set is repeated in each epoch
    preprocess: Preprocess
    adi_repeats: int = 0      # repeats for Adi's random-label set (0: trigger_repeats)
    weight_decay: float = 0.0
    augment: bool = False     # random crop (pad 4) + horizontal flip of *clean* images only
    lr: float = 1e-3
    threads: int | None = None  # torch intra-op threads while training (None: leave as is)


def _augment(xb: torch.Tensor, clean: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flip and shift (pad 4, reflect) the clean rows of a batch; trigger rows stay as is."""
    n, _, h, w = xb.shape
    flip = (torch.rand(n, generator=gen) < 0.5) & clean
    xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
    padded = nn.functional.pad(xb, (4, 4, 4, 4), mode="reflect")
    dy, dx = torch.randint(0, 9, (2, n), generator=gen)
    out = xb.clone()
    for i in torch.nonzero(clean).flatten().tolist():
        out[i] = padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
    return out


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch on ``n`` threads inside the block (None or 0: as it is), its own count after.
    One thread keeps small models deterministic on the CPU and fast on a shared machine."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_classifier(model: nn.Module, x: np.ndarray, y: np.ndarray, recipe: Recipe, *,
                     trig_x: np.ndarray | None = None, trig_y: np.ndarray | None = None,
                     seed: int = 0, device: str = "cpu", desc: str = "train",
                     quiet: bool = False) -> nn.Module:
    """Train ``model`` on clean (x, y) plus, if given, the trigger set repeated
    ``recipe.trigger_repeats`` times per epoch. Shuffling is seeded, so a vanilla twin trained
    with the same seed sees the clean data in a comparable order."""
    xs, ys = [torch.from_numpy(np.ascontiguousarray(x, np.float32))], [torch.from_numpy(y)]
    n_clean = len(y)
    if trig_x is not None and trig_y is not None and len(trig_y):
        for _ in range(recipe.trigger_repeats):
            xs.append(torch.from_numpy(np.ascontiguousarray(trig_x, np.float32)))
            ys.append(torch.from_numpy(trig_y))
    xa, ya = torch.cat(xs), torch.cat(ys).long()
    is_clean = torch.arange(len(ya)) < n_clean
    gen = torch.Generator().manual_seed(seed)
    with torch_threads(recipe.threads):
        return _fit(model, xa, ya, is_clean, recipe, gen, device, desc, quiet)


def _fit(model: nn.Module, xa: torch.Tensor, ya: torch.Tensor, is_clean: torch.Tensor,
         recipe: Recipe, gen: torch.Generator, device: str, desc: str,
         quiet: bool) -> nn.Module:
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    pre = recipe.preprocess
    bar = tqdm(range(recipe.epochs), desc=desc, file=sys.stderr, leave=False,
               disable=quiet or not sys.stderr.isatty())   # no bar frames in a log
    for _ in bar:
        order = torch.randperm(len(ya), generator=gen)
        total, count = 0.0, 0
        for start in range(0, len(order), recipe.batch_size):
            idx = order[start:start + recipe.batch_size]
            xb = xa[idx]
            if recipe.augment:
                xb = _augment(xb, is_clean[idx], gen)
            xb, yb = pre.apply_torch(xb.to(device)), ya[idx].to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        bar.set_postfix(loss=f"{total / max(count, 1):.4f}")
    log.info("%s: final epoch loss %.4f", desc, total / max(count, 1))
    return model.eval()


@torch.no_grad()
def torch_logits(model: nn.Module, x01: np.ndarray, pre: Preprocess, device: str = "cpu",
                 batch: int = 1024) -> np.ndarray:
    """Logits of a torch model on canonical images."""
    model.eval()
    outs = [model(pre.apply_torch(torch.from_numpy(x01[i:i + batch]).to(device))).cpu().numpy()
            for i in range(0, len(x01), batch)]
    return np.concatenate(outs)


def onnx_logits(path: str | Path, x01: np.ndarray, pre: Preprocess,
                batch: int = 1024) -> np.ndarray:
    """Logits of an ONNX classifier (onnxruntime, CPU) on canonical images."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1   # small models; robust when the cores are shared
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: pre.apply_numpy(x01[i:i + batch])})[0]
            for i in range(0, len(x01), batch)]
    return np.concatenate(outs)


def evaluate_onnx(path: str | Path, x01: np.ndarray, y: np.ndarray, pre: Preprocess) -> float:
    """Top-1 accuracy of an ONNX classifier."""
    return float(np.mean(onnx_logits(path, x01, pre).argmax(1) == y))


def _torch_export(model: nn.Module, path: str, input_shape: tuple[int, int, int],
                  dynamo: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:   # the exporter's default opset; BatchNorm folded into the convolutions
            torch.onnx.export(model, (torch.zeros(1, *input_shape),), path, dynamo=True,
                              input_names=["input"], output_names=["logits"], verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
        else:
            torch.onnx.export(model, torch.zeros(1, *input_shape), path, dynamo=False,
                              opset_version=13, input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def export_onnx(model: nn.Module, path: str | Path, input_shape: tuple[int, int, int],
                check_x01: np.ndarray, pre: Preprocess, *, dynamo: bool = False) -> float:
    """Export with the TorchScript exporter (opset 13, dynamic batch) or, with ``dynamo``,
    torch's dynamo exporter, cap the IR version at 10 for onnxruntime, write atomically and
    check onnxruntime against torch. Returns the max absolute logit difference on
    ``check_x01``."""
    import onnx

    path = Path(path)
    model = model.cpu().eval()
    # the exporter writes into a private folder (dynamo puts the weights in a .data file
    # beside its output); the checked model, weights inline, replaces path only at the end
    with tempfile.TemporaryDirectory(prefix="audit-export-") as work, \
            atomic_path(path) as tmp_path:
        raw, tmp = os.path.join(work, "model.onnx"), str(tmp_path)
        _torch_export(model, raw, input_shape, dynamo)
        proto = onnx.load(raw)
        proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)
        diff = float(np.max(np.abs(onnx_logits(tmp, check_x01, pre)
                                   - torch_logits(model, check_x01, pre))))
        if not diff <= EXPORT_ATOL:
            raise AuditError(f"{path}: exported ONNX differs from torch by {diff:.3g} "
                             f"(> {EXPORT_ATOL})")
    return diff
