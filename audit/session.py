"""Shared plumbing for commands: a model, its preprocessing, and data in its geometry."""

from __future__ import annotations

import os
from dataclasses import dataclass

from audit.data import Dataset, Preprocess, load_dataset
from audit.graphs.model import AuditModel


@dataclass
class Loaded:
    model: AuditModel
    preprocess: Preprocess


def load(model_path: str | os.PathLike, preprocess: Preprocess | None = None,
         device: str = "auto") -> Loaded:
    return Loaded(AuditModel.load(model_path, device=device), preprocess or Preprocess())


def data_for(am: AuditModel, path: str | os.PathLike, *, limit: int | None = None,
             check_labels: bool = True) -> Dataset:
    info = am.info
    return load_dataset(path, channels=info.channels, height=info.height, width=info.width,
                        num_classes=info.num_classes if check_labels else None, limit=limit)
