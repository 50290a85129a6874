"""audit.retrain on a tiny hand-made network: the weight average (RetrainConfig.ema) and the
reset units it must leave at their reset value."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from audit.reset import ResetMask
from audit.retrain import KD_TEMPERATURE, RetrainConfig, _kd, free_scores, retrain


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 12), torch.nn.ReLU(),
                               torch.nn.Linear(12, 3))


def _data(n: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.random((n, 1, 4, 4), dtype=np.float32) * 0.3
    x[np.arange(n), 0, y, y] += 0.7          # class c lights pixel (c, c)
    return x.astype(np.float32), y


# the weight average off (the default is 0.98): each test sets it
CFG = RetrainConfig(epochs=6, lr=3e-2, batch_size=16, augment=False, distill=0.0, mixup=0.0,
                    max_epochs=6, ema=0.0)


def _train(cfg: RetrainConfig, reset_rows=()) -> torch.nn.Module:
    net = _net()
    keep = ResetMask()
    if len(reset_rows):
        keep.add(net[1].weight, np.asarray(reset_rows), 0.0)
        keep.add(net[1].bias, np.asarray(reset_rows), 0.0)
    x, y = _data()
    retrain(net, net, x, y, cfg, keep, seed=3)
    return net


def _params(net: torch.nn.Module) -> np.ndarray:
    return torch.cat([p.detach().flatten() for p in net.parameters()]).numpy()


def test_default_is_the_weight_average():
    assert RetrainConfig().ema == 0.98


def test_ema_with_a_vanishing_decay_is_the_last_step():
    plain = _params(_train(CFG))
    almost_off = _params(_train(replace(CFG, ema=1e-12)))
    np.testing.assert_allclose(almost_off, plain, rtol=0, atol=1e-6)


def test_ema_returns_the_average_not_the_last_step():
    plain = _train(CFG)
    avg = _train(replace(CFG, ema=0.9))
    diff = np.abs(_params(avg) - _params(plain)).max()
    assert diff > 1e-3, diff
    # still a trained classifier: the averaged weights separate the three classes
    x, y = _data(seed=1)
    with torch.no_grad():
        acc = float((avg(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    assert acc >= 0.9, acc


def test_ema_keeps_reset_units_exactly_zero():
    net = _train(replace(CFG, ema=0.9), reset_rows=[0, 5, 7])
    w, b = net[1].weight.detach().numpy(), net[1].bias.detach().numpy()
    assert np.all(w[[0, 5, 7]] == 0) and np.all(b[[0, 5, 7]] == 0)
    assert np.abs(w[[1, 2, 3]]).sum() > 0


def test_free_scores_mark_a_suspect_class_on_images_of_other_classes():
    """Suspect class 2 is left free on a clean image of class 0 and on a blend of 0 and 1, not
    on an image of 2 or a blend that holds a 2; no suspects, nothing is left free."""
    a = torch.tensor([0, 0, 2, 1])   # first label: clean 0, blend 0+1, clean 2, blend 1+2
    b = torch.tensor([0, 1, 2, 2])
    assert free_scores((a, b), (), 4) is None
    free = free_scores((a, b), [2], 4)
    assert free.tolist() == [[False, False, True, False], [False, False, True, False],
                             [False] * 4, [False] * 4]


def test_a_free_class_takes_no_distillation_gradient_and_the_others_keep_their_ratios():
    """With class 2 free, its student logit gets no gradient from the distillation; the
    loss is the plain distillation over the other classes, so it is zero when the student
    matches the teacher on them whatever either says of class 2."""
    teacher = torch.tensor([[3.0, 1.0, 2.5, 0.0]])
    free = torch.tensor([[False, False, True, False]])
    student = torch.tensor([[3.0, 1.0, -4.0, 0.0]], requires_grad=True)
    loss = _kd(student, teacher, KD_TEMPERATURE, free)
    loss.backward()
    assert abs(loss.item()) < 1e-6 and student.grad[0, 2].item() == 0.0
    plain = _kd(student, teacher, KD_TEMPERATURE)
    assert plain.item() > 0.1   # without it, class 2's gap is a real loss
    others = [0, 1, 3]
    shifted = torch.tensor([[2.0, 1.5, 9.0, 0.0]], requires_grad=True)
    masked = _kd(shifted, teacher, KD_TEMPERATURE, free)
    reduced = _kd(shifted[:, others], teacher[:, others], KD_TEMPERATURE)
    assert torch.allclose(masked, reduced, atol=1e-5)
