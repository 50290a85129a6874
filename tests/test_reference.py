"""Clean reference classifiers (audit.reference): a feature of the data fools them, a trigger
that only a backdoored model learnt does not."""

from __future__ import annotations

import numpy as np
import pytest

from audit.reference import REFERENCES, accuracy, train_references


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits at 8x8 in [0, 1]: 1,000 images to train on, the rest held out."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    return x[:1000], y[:1000], x[1000:], y[1000:]


@pytest.fixture(scope="module")
def refs(digits):
    x, y, _, _ = digits
    return train_references(x, y, 10, seed=3)


def test_references_learn_the_task(refs, digits):
    _, _, hx, hy = digits
    assert len(refs) == REFERENCES
    accs = [accuracy(r, hx, hy) for r in refs]
    assert min(accs) >= 0.9, accs


def _rate(refs, x, c):
    return float(np.mean([accuracy(r, x, np.full(len(x), c)) for r in refs]))


def test_a_feature_of_the_data_fools_them_a_foreign_patch_does_not(refs, digits):
    """Drawing class 1's mean image over other digits is a trigger any digit classifier obeys;
    a 3x3 checkerboard in a corner, where no digit has ink, is one a clean classifier never
    learnt (the shape of a Zhang content mark)."""
    x, y, hx, hy = digits
    others = hx[hy != 1]
    mean1 = x[y == 1].mean(0)
    feature = np.maximum(0.2 * others, mean1).astype(np.float32)
    patch = others.copy()
    patch[:, :, 5:8, 5:8] = (np.indices((3, 3)).sum(0) % 2).astype(np.float32)
    natural, foreign = _rate(refs, feature, 1), _rate(refs, patch, 1)
    assert natural >= 0.6, natural
    assert foreign <= 0.1, foreign


def test_training_is_deterministic(digits):
    x, y, hx, _ = digits
    a = train_references(x[:300], y[:300], 10, seed=5)
    b = train_references(x[:300], y[:300], 10, seed=5)
    import torch

    with torch.no_grad():
        pa = a[0](torch.from_numpy(hx[:50])).numpy()
        pb = b[0](torch.from_numpy(hx[:50])).numpy()
    np.testing.assert_allclose(pa, pb, rtol=1e-5, atol=1e-6)
