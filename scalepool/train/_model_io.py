"""The four model functions training and prediction need, looked up in :mod:`scalepool.models`.

Training and prediction call these wrappers instead of importing the model
functions at import time, so that ``scalepool.train`` stays importable on its own
and a test can stand in a small model of its own with a matching interface.
"""

from __future__ import annotations

import os

import torch

from .._files import atomic_paths
from ..data import FrameSet


def fit_species_statistics(model: torch.nn.Module, frames: FrameSet) -> None:
    """Set the model's per-species energy shift/scale from ``frames`` (the training split)."""
    from ..models import fit_species_statistics as fit

    fit(model, frames)


def save_model(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Write a model file that :func:`load_model` reads back."""
    from ..models import save_model as save

    save(model, path)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    from ..models import load_model as load

    return load(path, map_location=map_location)


def save_model_atomic(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """:func:`save_model` to a temporary name in the same folder, then renamed onto ``path``."""
    with atomic_paths(path) as (tmp,):
        save_model(model, tmp)
