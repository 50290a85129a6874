"""Reference classifier architectures (paper Appendix B) plus a tiny one for the embedded demo.

Every model takes *preprocessed* NCHW float input (``(u8 * scale - mean) / std`` is applied
outside the model) and returns logits. Only plain ``nn.Conv2d`` / ``nn.Linear`` / ``nn.ReLU`` /
``nn.MaxPool2d`` / ``nn.BatchNorm2d`` / ``nn.Dropout`` / ``nn.Flatten`` modules are used, so the
TorchScript ONNX exporter turns them into Conv / Gemm / Relu / MaxPool / BatchNormalization /
Flatten nodes (dropout vanishes in eval mode). Each model is ``features`` (conv stack) followed by
``classifier`` (flatten + dense stack), both ``nn.Sequential``.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from audit.errors import AuditError

__all__ = [
    "ARCHITECTURES",
    "ArchSpec",
    "CifarNet",
    "DigitsCNN",
    "MnistNet",
    "MnistPlusNet",
    "make_model",
]


class _SeqNet(nn.Module):
    """``features`` then ``classifier``; ``input_shape`` is (C, H, W)."""

    input_shape: tuple[int, int, int] = (1, 28, 28)

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class DigitsCNN(_SeqNet):
    """Tiny CNN for scikit-learn's 8x8 digits upsampled to 16x16 grey (the embedded default).

    Conv 16 3x3 ReLU → MaxPool 2 → Conv 32 3x3 ReLU → MaxPool 2 → Dense 64 ReLU → Dense 10,
    with *same* padding (valid padding shrinks 16x16 to 2x2 before the dense layers and costs
    1–3 points of test accuracy on the 450 held-out digits).
    """

    input_shape = (1, 16, 16)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(
            nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 16 -> 8
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8 -> 4
            ),
            nn.Sequential(
                nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, num_classes),
            ),
        )


class MnistNet(_SeqNet):
    """Paper Table 5: Conv 32 5x5 → MaxPool → Conv 16 5x5 → MaxPool → Dense 512 → Dense 10."""

    input_shape = (1, 28, 28)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(
            nn.Sequential(
                nn.Conv2d(1, 32, 5), nn.ReLU(), nn.MaxPool2d(2),   # 28 -> 24 -> 12
                nn.Conv2d(32, 16, 5), nn.ReLU(), nn.MaxPool2d(2),  # 12 -> 8 -> 4
            ),
            nn.Sequential(
                nn.Flatten(), nn.Linear(16 * 4 * 4, 512), nn.ReLU(), nn.Linear(512, num_classes),
            ),
        )


class MnistPlusNet(_SeqNet):
    """Paper Table 6 (16 classes there: digits + 6 EMNIST letters; EMNIST is not available
    offline, hence ``num_classes`` defaults to 10)."""

    input_shape = (1, 28, 28)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(
            nn.Sequential(
                nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(),
                nn.MaxPool2d(2),                                    # 28 -> 24 -> 12
                nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(),
                nn.MaxPool2d(2),                                    # 12 -> 8 -> 4
            ),
            nn.Sequential(
                nn.Flatten(),
                nn.Linear(64 * 4 * 4, 200), nn.ReLU(), nn.Dropout(0.5),
                nn.Linear(200, 200), nn.ReLU(), nn.Dropout(0.5),
                nn.Linear(200, num_classes),
            ),
        )


def _cifar_block(cin: int, cout: int, drop: float) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(drop),
    ]


class CifarNet(_SeqNet):
    """Paper Table 7: [Conv BN ReLU]x2 → MaxPool → Dropout, for 32/64/128 channels (same
    padding), then Dense 10. Weight decay 1e-4 is a training setting (see build.py)."""

    input_shape = (3, 32, 32)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(
            nn.Sequential(
                *_cifar_block(3, 32, 0.2),    # 32 -> 16
                *_cifar_block(32, 64, 0.3),   # 16 -> 8
                *_cifar_block(64, 128, 0.4),  # 8 -> 4
            ),
            nn.Sequential(nn.Flatten(), nn.Linear(128 * 4 * 4, num_classes)),
        )


@dataclass(frozen=True)
class ArchSpec:
    """Which network a zoo data set uses, and its input geometry."""

    name: str
    cls: type[_SeqNet]
    input_shape: tuple[int, int, int]
    num_classes: int = 10


ARCHITECTURES: dict[str, ArchSpec] = {
    "digits": ArchSpec("DigitsCNN", DigitsCNN, DigitsCNN.input_shape),
    "mnist": ArchSpec("MnistNet", MnistNet, MnistNet.input_shape),
    "mnist_plus": ArchSpec("MnistPlusNet", MnistPlusNet, MnistPlusNet.input_shape),
    "cifar10": ArchSpec("CifarNet", CifarNet, CifarNet.input_shape),
}


def make_model(name: str, num_classes: int = 10) -> nn.Module:
    """Instantiate a model by zoo data-set key (``digits``, ``mnist``, ...) or class name."""
    for key, spec in ARCHITECTURES.items():
        if name in (key, spec.name):
            return spec.cls(num_classes)
    raise AuditError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}")
