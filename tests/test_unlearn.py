"""audit.unlearn: the attacks that chase a watermark while retraining.

A hand-made backdoored linear classifier on 8x8 images: class k is the brightest of ten
fixed pixel groups (the clean task), and a bright 2x2 corner sends everything to class 1 (the
backdoor). The patch attack, started from one pixel of the corner, must grow into a trigger that fires; the
universal perturbation must stay within its budget; and retraining with the adversary must
unlearn the corner while the clean task stays learnt.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.reset import ResetMask
from audit.retrain import retrain
from audit.settings import RetrainConfig
from audit.unlearn import Adversary

K = 10


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    x = rng.uniform(0, 0.2, (n, 1, 8, 8)).astype(np.float32)
    for i, c in enumerate(y):           # class c: row c % 8 bright in the left or right half
        half = slice(0, 4) if c < 8 else slice(4, 8)
        x[i, 0, c % 8 if c < 8 else (c - 8) * 2 + 3, half] = 0.9
    x[:, 0, :2, 6:] = 0.0               # the backdoor's corner is dark in clean images
    return x, y.astype(np.int64)


def _backdoored_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
                                torch.nn.Linear(32, K))
    x, y = _data(2000, 0)
    xs = x[:300].copy()
    xs[:, 0, :2, 6:] = 1.0
    xa = torch.from_numpy(np.concatenate([x, xs]))
    ya = torch.from_numpy(np.concatenate([y, np.full(300, 1)]))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xa), ya).backward()
        opt.step()
    return model.eval()


def _fires(model, x: np.ndarray, y: np.ndarray) -> float:
    xs = x[y != 1].copy()
    xs[:, 0, :2, 6:] = 1.0
    with torch.no_grad():
        return float((model(torch.from_numpy(xs)).argmax(1) == 1).float().mean())


def _accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


@pytest.fixture(scope="module")
def model():
    m = _backdoored_model()
    x, y = _data(500, 1)
    assert _accuracy(m, x, y) >= 0.95 and _fires(m, x, y) >= 0.95
    return m


def _adversary(model, x, y, eps=0.1, steps=5, median_norm=20.0):
    # the recovered trigger is the backdoor's core: one pixel of the 2x2 corner, half bright
    mask = np.zeros((1, 8, 8), np.float32)
    mask[0, 0, 7] = 1.0
    return Adversary(model, torch.from_numpy(x), torch.from_numpy(y),
                     {1: (mask, np.full((1, 8, 8), 0.5, np.float32))}, median_norm, eps, steps,
                     torch.Generator().manual_seed(0))


def test_patch_attack_moves_to_the_backdoor_and_delta_stays_in_budget(model):
    x, y = _data(200, 2)
    adv = _adversary(model, x, y, eps=0.1, steps=60)
    before = adv.fire_rates(torch.from_numpy(x), torch.from_numpy(y))[1]["patch"]
    adv.refresh(model)
    after = adv.fire_rates(torch.from_numpy(x), torch.from_numpy(y))[1]
    assert before <= 0.2 and after["patch"] >= 0.9, (before, after)
    a = adv.attacks[0]
    assert float(a.delta.abs().max()) <= 0.1 + 1e-6
    # the budget: 3x the recovered norm (1 px), below half the median norm (10 px)
    assert a.budget == pytest.approx(3.0)
    assert float(a.mask().detach().sum()) <= 1.5 * a.budget
    # the model's weights were not touched by the attack and still train
    assert all(p.requires_grad for p in model.parameters())


def test_attacked_images_keep_their_labels_and_only_one_attack_each(model):
    x, y = _data(64, 3)
    adv = _adversary(model, x, y)
    xb, yb = adv.batch(200)
    assert xb.shape == (200, 1, 8, 8) and yb.dtype == torch.long
    assert float(xb.min()) >= 0.0 and float(xb.max()) <= 1.0


def test_retraining_with_the_adversary_unlearns_the_backdoor(model):
    import copy

    m = copy.deepcopy(model).train()
    x, y = _data(100, 4)                # the small clean subset
    test_x, test_y = _data(500, 5)
    cfg = RetrainConfig(epochs=15, lr=3e-3, batch_size=32, augment=False, distill=0.0, mixup=0.0,
                        max_epochs=0, ema=0.0)
    plain = copy.deepcopy(model).train()
    retrain(plain, plain, x, y, cfg, ResetMask(), seed=0)
    adv = _adversary(m, x, y, eps=0.1, steps=5)
    retrain(m, m, x, y, cfg, ResetMask(), seed=0, adversary=adv)
    fired_plain, fired_adv = _fires(plain, test_x, test_y), _fires(m, test_x, test_y)
    acc_plain, acc_adv = _accuracy(plain, test_x, test_y), _accuracy(m, test_x, test_y)
    msg = f"fires {fired_plain:.3f} / {fired_adv:.3f}, accuracy {acc_plain:.3f} / {acc_adv:.3f}"
    assert fired_plain >= 0.8, msg          # clean fine-tuning alone keeps the backdoor
    assert fired_adv <= 0.2, msg
    assert acc_adv >= acc_plain - 0.05, msg
