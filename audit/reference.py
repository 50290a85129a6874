"""Clean reference classifiers: does a recovered trigger belong to the model or to the data?

A backdoor is a shortcut the suspect model learnt from poisoned training data; a classifier
trained on clean images of the same task does not have it, so a backdoor's trigger leaves that
classifier's predictions alone. A class that is merely easy to reach (a few strokes turn any
digit into a 9 on a small net) is reached by the same strokes on any model of the task: its
recovered trigger is a feature of the data, and it fools a clean classifier too.

``train_references`` fits ``REFERENCES`` small CNNs on the detection images and their labels
(the clean data the user gave, never the suspect model's outputs); ``accuracy`` is the share
of images a classifier (a reference, or the suspect model's forward) gives a label: stamped
images labelled with the trigger's class, the share the trigger sends there.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

#: reference classifiers, each from its own seed (their rates are averaged)
REFERENCES = 2
#: training of each: Adam at LR for EPOCHS passes in batches of BATCH, random shifts of up to
#: 1/14 of the image side (2 pixels on MNIST, at least 1)
EPOCHS = 30
BATCH = 64
LR = 1e-3
#: images are seen at most this many pixels a side (larger ones are resized): the references
#: learn the task's shapes, and training stays cheap on large inputs
MAX_SIDE = 32


class _Reference(nn.Module):
    """Two conv blocks and a dense head; any input size (adaptive pooling to 4x4)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(64 * 16, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if max(x.shape[-2:]) > MAX_SIDE:
            s = MAX_SIDE / max(x.shape[-2:])
            size = (max(1, round(x.shape[-2] * s)), max(1, round(x.shape[-1] * s)))
            x = F.interpolate(x, size=size, mode="area")
        return self.head(self.features(x))


def train_references(x01: np.ndarray, y: np.ndarray, num_classes: int, seed: int,
                     device: str | torch.device = "cpu") -> list[nn.Module]:
    """``REFERENCES`` classifiers trained on images x01 ([N,C,H,W] in [0, 1]) and labels y."""
    device = torch.device(device)
    x = torch.from_numpy(np.ascontiguousarray(x01, dtype=np.float32)).to(device)
    t = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)
    shift = max(1, x.shape[-1] // 14)
    refs = []
    for r in range(REFERENCES):
        gen = torch.Generator().manual_seed(seed + r)
        with torch.random.fork_rng(devices=[]):   # the layers' initialisation, without moving
            torch.manual_seed(seed + r)           # the caller's global random state
            net = _Reference(x.shape[1], num_classes).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=LR)
        net.train()
        for _ in range(EPOCHS):
            order = torch.randperm(len(x), generator=gen).to(device)
            for i in range(0, len(x), BATCH):
                idx = order[i:i + BATCH]
                dx, dy = (int(v) for v in torch.randint(-shift, shift + 1, (2,), generator=gen))
                xb = torch.roll(x[idx], (dy, dx), (2, 3))
                loss = F.cross_entropy(net(xb), t[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        refs.append(net)
    return refs


@torch.no_grad()
def accuracy(predict, x01: np.ndarray, y: np.ndarray, device: str | torch.device = "cpu",
             batch: int = 256) -> float:
    """Share of images x01 ([N,C,H,W] in [0, 1]) that predict (a module or a forward function
    mapping an image tensor on device to logits) classifies as y."""
    if len(x01) == 0:
        return 0.0
    hits = 0
    for i in range(0, len(x01), batch):
        xb = torch.from_numpy(np.ascontiguousarray(x01[i:i + batch], dtype=np.float32)).to(device)
        hits += int((predict(xb).argmax(1).cpu().numpy() == np.asarray(y[i:i + batch])).sum())
    return hits / len(x01)
