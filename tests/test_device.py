"""--device tells the truth: one resolver (audit.graphs.runtime.resolve_device) maps auto, cpu,
cuda and cuda:N to a torch device and onnxruntime providers, and every torch tensor of
Neural Cleanse, retraining, the teacher, the OOD probe and BN re-estimation goes there.

CPU only: on this machine the real device is the CPU (every tensor checked to live there); a
fake device (torch's "meta", returned by a patched resolver, with `.to(meta)` recorded and
answered by the tensor itself, so that the run still computes on the CPU) shows which tensors
the plumbing sends to the chosen device, by the function that sends them. CUDA options are
refused in one line before any model is loaded where no CUDA device is usable.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from audit.cli import run
from audit.data import Dataset, Preprocess
from audit.graphs import runtime

PP = Preprocess()
SHAPE = (3, 8, 8)        # 3 channels: a pattern [k, 3, H, W] is told apart from a mask [k, 1, H, W]
CLASSES = 4
N = 40


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A small CNN with a BatchNorm after a ReLU (kept as a node: nothing to fold it into) and
    a labelled set of its own predictions; exported by the TorchScript exporter."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 16), nn.ReLU(), nn.Linear(16, CLASSES)).eval()
    with torch.no_grad():   # a fresh BatchNorm's tensors are 1s and 0s, which the exporter merges
        bn = model[2]
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.2, 0.2)
        bn.running_mean.uniform_(0, 0.5), bn.running_var.uniform_(0.5, 2)
    path = tmp_path_factory.mktemp("device") / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.zeros(1, *SHAPE), str(path), dynamo=False, opset_version=13,
                          input_names=["input"], output_names=["logits"],
                          training=torch.onnx.TrainingMode.PRESERVE,
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    rng = np.random.default_rng(0)
    x = rng.random((N, *SHAPE), dtype=np.float32)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).argmax(1).numpy()
    y[:CLASSES] = np.arange(CLASSES)      # every class present
    return {"path": path, "data": Dataset(x=x, y=y.astype(np.int64), source="tiny")}


def _config():
    from audit.launder import LaunderConfig
    from audit.nc import NCConfig
    from audit.retrain import RetrainConfig

    return LaunderConfig(rounds=1, seed=0, device="cpu", nc=NCConfig(epochs=2, steps_per_epoch=2),
                         retrain=RetrainConfig(epochs=1, max_epochs=1, batch_size=16))


# ------------------------------------------------------------------------------------------
# the resolver


def test_resolver_forms_and_cpu():
    assert runtime.parse_device(" CUDA:3 ") == "cuda:3"
    for bad in ("cuda:x", "cpu:0", "gpu", "cuda:", "cuda:-1", ""):
        with pytest.raises(runtime.AuditError, match="unknown device"):
            runtime.parse_device(bad)
    d = runtime.resolve_device("cpu")
    assert d.torch == torch.device("cpu") and d.providers == ["CPUExecutionProvider"]
    assert runtime.torch_device("cpu") == torch.device("cpu")


def test_resolver_maps_cuda_n_to_torch_and_onnxruntime(monkeypatch):
    """With two CUDA devices (pretended), cuda:1 is torch's cuda:1 and the CUDA provider's
    device_id 1; cuda:2 is refused in one line."""
    monkeypatch.setattr(runtime, "cuda_usable", lambda: True)
    monkeypatch.setattr(runtime, "_torch_cuda_count", lambda: 2)
    d = runtime.resolve_device("cuda:1")
    assert d.torch == torch.device("cuda", 1)
    assert d.providers == [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert runtime.resolve_device("cuda").torch == torch.device("cuda")
    assert runtime.resolve_device("auto").torch == torch.device("cuda")
    assert runtime.providers("auto")[0] == "CUDAExecutionProvider"
    with pytest.raises(runtime.AuditError, match=r"cuda:2: this machine has 2 CUDA device"):
        runtime.resolve_device("cuda:2")


# ------------------------------------------------------------------------------------------
# the command line refuses CUDA where there is none, before loading the model


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "cuda:1"])
@pytest.mark.parametrize("command", ["launder", "detect", "evaluate", "inspect"])
def test_cuda_without_a_gpu_is_one_line_before_loading(tiny, tmp_path, capsys, monkeypatch, command, device):
    if runtime.cuda_usable():
        pytest.skip("a CUDA device is usable here")
    from audit.graphs.model import AuditModel

    loads = []
    monkeypatch.setattr(AuditModel, "load", classmethod(lambda cls, *a, **k: loads.append(a)))
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((2, 8, 8, 3), np.uint8), y=np.array([0, 1]))
    args = {"launder": ["--data", data, "-o", tmp_path / "o.onnx"], "detect": ["--data", data],
            "evaluate": ["--data", data], "inspect": []}[command]
    capsys.readouterr()
    rc = run([command, str(tiny["path"]), *map(str, args), "--device", device])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "CUDA" in lines[0], err
    assert f"--device {device}" in lines[0]
    assert loads == [] and not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("device", ["cuda:x", "gpu", "cpu:1"])
def test_bad_device_value_is_a_usage_error(tiny, capsys, device):
    capsys.readouterr()
    rc = run(["evaluate", str(tiny["path"]), "--data", "x.npz", "--device", device])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Invalid value for '--device'" in lines[0] and device in lines[0], err


# ------------------------------------------------------------------------------------------
# on the CPU every tensor of a step lives on the CPU


def test_cpu_recovery_and_retraining_step_stay_on_the_cpu(tiny):
    from audit.converters.to_torch import to_torch, torch_logits
    from audit.forward import make_forward
    from audit.graphs.model import AuditModel
    from audit.nc import NCConfig, _ChunkTriggers, recover
    from audit.reset import ResetMask, reestimate_batchnorm
    from audit.retrain import RetrainConfig, retrain

    cpu = runtime.torch_device("cpu")
    am = AuditModel.load(tiny["path"], device="cpu")
    x = tiny["data"].x
    tm = to_torch(am, am.model_input(x[:8], PP), device=cpu)
    seen: list[torch.device] = []
    fwd = make_forward(tm, PP)

    def forward(t):
        seen.append(t.device)
        out = fwd(t)
        seen.append(out.device)
        return out

    assert {p.device for p in tm.module.parameters()} == {cpu}
    trig = _ChunkTriggers(forward, torch.from_numpy(x).to(cpu), [0, 1], NCConfig(), torch.Generator(), cpu)
    trig.epoch(np.array([0, 1]), np.full(2, 1e-3))
    state = [t for s in trig.opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim()]
    assert state and {t.device for t in [trig.mask_raw, trig.pat_raw, trig.data, trig.target, *state]} == {cpu}
    rec = recover(forward, x, CLASSES, NCConfig(epochs=1, steps_per_epoch=1), device=cpu)
    assert isinstance(rec.masks, np.ndarray) and rec.masks.shape == (CLASSES, 1, 8, 8)

    teacher_seen: list[torch.device] = []

    def teacher(t):
        teacher_seen.append(t.device)
        return fwd(t)

    losses = retrain(tm.module, forward, x, tiny["data"].y, RetrainConfig(epochs=1, max_epochs=1, lr=1e-3),
                     ResetMask(), teacher=teacher, ood=lambda e: x[:8], ood_label=0,
                     target_mask=np.arange(N) < 8, device=cpu)
    assert len(losses) == 1 and teacher_seen
    reestimate_batchnorm(tm.module, forward, x, device=cpu)
    assert torch_logits(tm, am.model_input(x[:4], PP)).shape == (4, CLASSES)
    assert set(seen) | set(teacher_seen) == {cpu}
    assert {t.device for t in [*tm.module.parameters(), *tm.module.buffers()]} == {cpu}


# ------------------------------------------------------------------------------------------
# a fake device: what the plumbing sends where


FAKE = torch.device("meta")


def _caller() -> str:
    """The function that called .to(), past comprehension frames (their own before 3.12)."""
    f = sys._getframe(2)
    while f.f_code.co_name.startswith("<"):
        f = f.f_back
    return f.f_code.co_name


def _is_fake(args, kwargs) -> bool:
    dev = kwargs.get("device", args[0] if args else None)
    if isinstance(dev, (str, torch.device)):
        try:
            return torch.device(dev) == FAKE
        except RuntimeError:
            return False
    return False


@pytest.fixture
def fake_device(monkeypatch):
    """The resolver answers "meta"; every `.to(meta)` is recorded (caller, what) and answered by
    the tensor or module itself, so the run goes on computing on the CPU."""
    sent: list[tuple[str, object]] = []
    tensor_to, module_to = torch.Tensor.to, nn.Module.to

    def fake_tensor_to(self, *args, **kwargs):
        if _is_fake(args, kwargs):
            sent.append((_caller(), self))
            return self
        return tensor_to(self, *args, **kwargs)

    def fake_module_to(self, *args, **kwargs):
        if _is_fake(args, kwargs):
            sent.append((_caller(), self))
            return self
        return module_to(self, *args, **kwargs)

    monkeypatch.setattr(runtime, "torch_device", lambda device="auto": FAKE)
    monkeypatch.setattr(torch.Tensor, "to", fake_tensor_to)
    monkeypatch.setattr(nn.Module, "to", fake_module_to)
    return sent


def test_launder_sends_module_teacher_triggers_and_batches_to_the_device(tiny, fake_device):
    from audit.graphs.model import AuditModel
    from audit.launder import Launderer

    am = AuditModel.load(tiny["path"], device="cpu")
    data = tiny["data"]
    lau = Launderer(am, data, PP, _config())
    result = lau.run()
    assert len(result.rounds) == 1 and result.model is not None
    assert lau.device == FAKE

    def tensors(caller: str) -> list[torch.Tensor]:
        return [t for c, t in fake_device if c == caller and torch.is_tensor(t)]

    modules = [(c, m) for c, m in fake_device if isinstance(m, nn.Module)]
    # the torch mirror, and the teacher (a separate copy of it)
    assert ("to_torch", lau.tm.module) in modules
    teachers = [m for c, m in modules if c == "_teacher"]
    assert len(teachers) == 1 and teachers[0] is not lau.tm.module
    assert [p.shape for p in teachers[0].parameters()] == [p.shape for p in lau.tm.module.parameters()]
    # Neural Cleanse: the images, the raw masks [k, 1, H, W] and patterns [k, C, H, W] (whose
    # Adam state is created where they are), the batch indices, targets and costs
    assert any(t.shape == (N, *SHAPE) for t in tensors("recover"))
    chunk = tensors("__init__")
    assert any(t.shape == (CLASSES, 1, 8, 8) for t in chunk)
    assert any(t.shape == (CLASSES, *SHAPE) for t in chunk)
    assert any(t.dtype == torch.int64 and t.shape == (CLASSES,) for t in chunk)    # targets
    epoch = tensors("epoch")
    assert any(t.dtype == torch.int64 and t.shape == (32,) for t in epoch)         # batch indices
    assert any(t.dtype == torch.float32 and t.shape == (CLASSES,) for t in epoch)  # lambda
    # retraining: the whole set (clean + stamped + masks), its labels and flags, the OOD images
    # of each epoch, each batch's indices (shifts, mixup draws and OOD labels follow the
    # batch's own device, as reset masks follow their weights')
    rt = tensors("retrain") + tensors("_epoch")
    big = [t for t in rt if t.dim() == 4 and t.shape[1:] == SHAPE and len(t) > N]
    assert big, [tuple(t.shape) for t in rt]
    n_set = len(big[0])
    assert any(t.dtype == torch.int64 and t.shape == (n_set,) for t in rt)         # labels
    assert sum(t.dtype == torch.bool and t.shape == (n_set,) for t in rt) >= 3     # augment, soft, target
    assert any(t.dim() == 4 and t.shape[1:] == SHAPE and len(t) <= n_set // 2 for t in rt)   # OOD
    assert any(t.dtype == torch.int64 and t.dim() == 1 and len(t) <= 16 for t in rt)          # batch idx
    # the original model's OOD predictions, the learning-rate trials' hold-out, the round's
    # accuracies and the BatchNorm re-estimation
    assert any(t.shape == (250, *SHAPE) for t in tensors("_ood_shares"))
    assert tensors("torch_loss") and tensors("torch_accuracy")
    assert any(t.shape == (N, *SHAPE) for t in tensors("reestimate_batchnorm"))
    # the kept weights come back to the CPU for write-back
    assert {p.device for p in lau.tm.module.parameters()} == {torch.device("cpu")}


def test_detect_sends_the_module_and_recovery_to_the_device(tiny, fake_device):
    from audit import api
    from audit.nc import NCConfig

    out = api.detect(tiny["path"], tiny["data"], preprocess=PP, config=NCConfig(epochs=1, steps_per_epoch=1),
                     device="cpu")
    assert len(out["norms"]) == CLASSES
    callers = {c for c, _ in fake_device}
    assert {"to_torch", "recover", "__init__", "epoch"} <= callers
    assert any(c == "to_torch" and isinstance(m, nn.Module) for c, m in fake_device)


def test_cli_help_names_the_device_forms(capsys):
    capsys.readouterr()
    assert run(["launder", "--help"]) == 0
    out = capsys.readouterr().out
    assert "auto|cpu|cuda|cuda:N" in out


def test_docs_say_what_runs_where():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "cuda:N" in text


@pytest.mark.parametrize("method", ["fine-tune", "prune", "fine-prune", "nc-unlearn", "i-bau"])
def test_baselines_send_the_module_and_their_batches_to_the_device(tiny, fake_device, method):
    """Each removal baseline runs its torch work where laundering does: the mirror goes to the
    device, and so do the subset its fine-tuning (or I-BAU's minimax) trains on and Neural
    Cleanse's images; the written model comes back to the CPU."""
    from dataclasses import replace

    from audit.graphs.model import AuditModel
    from audit.methods import remove
    from audit.settings import BaselineConfig

    am = AuditModel.load(tiny["path"], device="cpu")
    cfg = replace(_config(), method=method, baseline=BaselineConfig(ibau_rounds=1))
    result = remove(am, tiny["data"], PP, cfg)
    assert result.method == method and result.model is not None

    def tensors(caller: str) -> list[torch.Tensor]:
        return [t for c, t in fake_device if c == caller and torch.is_tensor(t)]

    assert any(c == "to_torch" and isinstance(m, nn.Module) for c, m in fake_device)
    trained = tensors("run") if method == "i-bau" else tensors("retrain")
    assert any(t.shape == (N, *SHAPE) for t in trained), [tuple(t.shape) for t in trained]
    if method == "nc-unlearn":
        assert any(t.shape == (N, *SHAPE) for t in tensors("recover"))
    if method != "i-bau":
        assert any(t.shape == (N, *SHAPE) for t in tensors("reestimate_batchnorm"))
