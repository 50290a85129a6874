"""audit.retrain on a tiny hand-made network: the weight average (RetrainConfig.ema) and the
reset units it must leave at their reset value."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from audit.reset import ResetMask
from audit.retrain import RetrainConfig, retrain


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
