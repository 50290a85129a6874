"""Architectures of the wide zoo, each usable at 8x8, 16x16, 28x28 grey and 32x32 colour input.

* ``table5``: paper Table 5 (Conv 32 5x5 → MaxPool → Conv 16 5x5 → MaxPool → Dense 512 → Dense
  10); valid padding from 28x28 up (the paper's net), same padding below.
* ``table6``: paper Table 6 with 10 classes ([Conv 32 3x3]x2 → MaxPool → [Conv 64 3x3]x2 →
  MaxPool → Dense 200 → Dense 200 → Dense 10, dropout 0.5); padding as ``table5``.
* ``table7``: paper Table 7 (CifarNet of architectures.py), 32x32 colour only.
* ``bncnn``: [Conv 3x3 BN ReLU]x2 → MaxPool → Conv 3x3 BN ReLU → MaxPool → Dense 10 (same
  padding), ``width`` channels then twice that.
* ``mlp``: Dense ``width`` → Dense ``width // 2`` → Dense 10.
* ``resnet``: a small residual net: Conv 3x3 BN ReLU stem, ``blocks`` (2 or 3) basic residual
  blocks (the second and third halve the resolution and, the second, double the channels, with
  a 1x1 conv + BN shortcut), global average pool, Dense 10.

Every model takes preprocessed NCHW input and returns logits.
"""

from __future__ import annotations

from torch import Tensor, nn

from audit.errors import AuditError

from .architectures import CifarNet

__all__ = ["ARCHS", "make_net"]

ARCHS = ("table5", "table6", "bncnn", "mlp", "resnet")   # drawn for grey inputs; table7: CIFAR


def _pad(k: int, hw: int) -> int:
    """Valid padding where the paper's input size allows it (28 and up), else same."""
    return 0 if hw >= 28 else k // 2


def _after(side: int, k: int, convs: int, pad: int) -> int:
    """Side after ``convs`` k x k convolutions (padding ``pad``) and a 2x2 max pool."""
    return (side - convs * (k - 1 - 2 * pad)) // 2


def _table5(c: int, hw: int, n: int) -> nn.Module:
    p = _pad(5, hw)
    s = _after(_after(hw, 5, 1, p), 5, 1, p)
    return nn.Sequential(
        nn.Conv2d(c, 32, 5, padding=p), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 16, 5, padding=p), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * s * s, 512), nn.ReLU(), nn.Linear(512, n))


def _table6(c: int, hw: int, n: int) -> nn.Module:
    p = _pad(3, hw)
    s = _after(_after(hw, 3, 2, p), 3, 2, p)
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=p), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=p), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=p), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=p), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * s * s, 200), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(200, 200), nn.ReLU(), nn.Dropout(0.5), nn.Linear(200, n))


def _cbr(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


def _bncnn(c: int, hw: int, n: int, width: int) -> nn.Module:
    s = hw // 4
    return nn.Sequential(
        *_cbr(c, width), *_cbr(width, width), nn.MaxPool2d(2),
        *_cbr(width, 2 * width), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(2 * width * s * s, n))


def _mlp(c: int, hw: int, n: int, width: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(c * hw * hw, width), nn.ReLU(),
                         nn.Linear(width, width // 2), nn.ReLU(), nn.Linear(width // 2, n))


class _Block(nn.Module):
    """Basic residual block: Conv BN ReLU Conv BN (+ shortcut) ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*_cbr(cin, cout, stride), nn.Conv2d(cout, cout, 3, padding=1),
                                  nn.BatchNorm2d(cout))
        self.short = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride=stride), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.short(x))


class ResNet(nn.Module):
    """Stem, ``blocks`` residual blocks, global average pool, Dense."""

    def __init__(self, c: int, n: int, width: int, blocks: int) -> None:
        super().__init__()
        plan = [(width, width, 1), (width, 2 * width, 2), (2 * width, 2 * width, 2)][:blocks]
        self.features = nn.Sequential(*_cbr(c, width), *[_Block(*p) for p in plan])
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                        nn.Linear(plan[-1][1], n))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def make_net(arch: str, channels: int, hw: int, *, num_classes: int = 10, width: int = 0,
             blocks: int = 0) -> nn.Module:
    """A fresh (randomly initialised: seed torch first) network of the wide zoo."""
    if arch == "table5":
        return _table5(channels, hw, num_classes)
    if arch == "table6":
        return _table6(channels, hw, num_classes)
    if arch == "table7":
        if (channels, hw) != (3, 32):
            raise AuditError(f"table7 (CifarNet) takes 3x32x32 input, not {channels}x{hw}x{hw}")
        return CifarNet(num_classes)
    if arch == "bncnn":
        return _bncnn(channels, hw, num_classes, width)
    if arch == "mlp":
        return _mlp(channels, hw, num_classes, width)
    if arch == "resnet":
        return ResNet(channels, num_classes, width, blocks)
    raise AuditError(f"unknown wide-zoo architecture {arch!r}; choose from "
                     f"{', '.join((*ARCHS, 'table7'))}")
