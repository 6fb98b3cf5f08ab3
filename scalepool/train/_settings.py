"""Settings of a training run: validation, the part a resume must repeat, loss, schedule, batch order."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from ._common import TrainError, dtype_name, resolve_dtype
from ._precision import PRECISIONS, check_precision

LOSSES = ("mae", "mse", "huber")
SPLIT_MODES = ("time", "random")  # time blocks (trajectories) or seeded random (independent frames)
SCHEDULERS = ("plateau", "cosine")

# Settings that may change between the sessions of one run without changing
# its results (length, safety stop, bookkeeping); every other field must match.
# ``max_minutes`` is a wall-clock safety stop, not a budget: a run's length is
# ``epochs`` (x :func:`steps_per_epoch` optimiser steps), the same on any machine.
_SESSION_FIELDS = ("epochs", "max_minutes", "checkpoint_every")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """The keyword arguments of :func:`scalepool.train.train`, validated once (see its docstring)."""

    epochs: int = 100
    max_minutes: float | None = None
    batch_size: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    loss: str = "mae"
    huber_delta: float = 0.1
    energy_weight: float = 0.1
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_gap: int = 0
    patience: int | None = 20
    scheduler: str = "plateau"
    lr_factor: float = 0.5
    lr_patience: int = 5
    min_lr: float = 1e-6
    max_grad_norm: float | None = None
    checkpoint_every: int | None = 20
    seed: int = 0
    dtype: str = "float32"
    split_mode: str = "time"
    split_seed: int = 0
    stress_weight: float = 0.0
    precision: str = "float32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", dtype_name(resolve_dtype(self.dtype)))
        check_precision(self.precision, dtype=self.dtype)  # the device is checked by train()
        object.__setattr__(self, "split_fractions", tuple(float(f) for f in self.split_fractions))
        checks = [
            (_is_int(self.epochs, 1), f"epochs must be an integer >= 1, got {self.epochs!r}"),
            (_is_int(self.batch_size, 1), f"batch_size must be an integer >= 1, got {self.batch_size!r}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}"),
            (self.huber_delta > 0, f"huber_delta must be positive (eV/Å), got {self.huber_delta}"),
            (self.energy_weight >= 0, f"energy_weight must be >= 0, got {self.energy_weight}"),
            (self.stress_weight >= 0, f"stress_weight must be >= 0, got {self.stress_weight}"),
            (
                len(self.split_fractions) == 3,
                f"split_fractions must be 3 numbers, got {self.split_fractions}",
            ),
            (_is_int(self.split_gap, 0), f"split_gap must be an integer >= 0, got {self.split_gap!r}"),
            (
                self.patience is None or _is_int(self.patience, 1),
                f"patience must be >= 1 or None, got {self.patience}",
            ),
            (self.scheduler in SCHEDULERS, f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}"),
            (0 < self.lr_factor < 1, f"lr_factor must lie in (0, 1), got {self.lr_factor}"),
            (_is_int(self.lr_patience, 0), f"lr_patience must be an integer >= 0, got {self.lr_patience!r}"),
            (self.min_lr >= 0, f"min_lr must be >= 0, got {self.min_lr}"),
            (self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm must be positive or None"),
            (
                self.checkpoint_every is None or _is_int(self.checkpoint_every, 1),
                f"checkpoint_every must be an integer >= 1 or None, got {self.checkpoint_every!r}",
            ),
            (
                self.max_minutes is None or self.max_minutes > 0,
                f"max_minutes must be positive, got {self.max_minutes}",
            ),
            (_is_int(self.seed, 0), f"seed must be an integer >= 0, got {self.seed!r}"),
            (self.split_mode in SPLIT_MODES, f"split_mode must be one of {SPLIT_MODES}, got {self.split_mode!r}"),
            (
                self.split_mode == "time" or self.split_gap == 0,
                f"a random split has no gap between blocks; got split_gap={self.split_gap}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainError(message)

    @property
    def torch_dtype(self) -> torch.dtype:
        return resolve_dtype(self.dtype)

    def request(self, branch: str, model_config: dict[str, Any]) -> dict[str, Any]:
        """What a resume must repeat: model config, branch and every result-shaping setting.

        ``epochs`` only matters to a cosine schedule (its length), so it joins
        the request only then.
        """
        fields = dataclasses.asdict(self)
        request = {k: v for k, v in fields.items() if k not in _SESSION_FIELDS}
        request["split_fractions"] = list(self.split_fractions)
        if self.split_mode == "time":  # the default; runs from before split modes keep their request
            request.pop("split_mode")
            request.pop("split_seed")
        if not self.stress_weight:  # off (the default): runs from before the stress loss keep their request
            request.pop("stress_weight")
        if self.precision == "float32":  # the default: runs from before mixed precision keep their request
            request.pop("precision")
        if self.scheduler == "cosine":
            request["epochs"] = self.epochs
        return {"branch": branch, "model": model_config, **request}

    def loss_function(self):
        """``loss(pred, ref) -> scalar`` averaged over elements (force components or frames)."""
        if self.loss == "mae":
            return lambda pred, ref: (pred - ref).abs().mean()
        if self.loss == "mse":
            return lambda pred, ref: (pred - ref).square().mean()
        return lambda pred, ref: torch.nn.functional.huber_loss(pred, ref, delta=self.huber_delta)

    def make_scheduler(self, optimizer: torch.optim.Optimizer):
        if self.scheduler == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=self.lr_factor, patience=self.lr_patience, min_lr=self.min_lr
            )
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs, eta_min=self.min_lr)


#: Help (and choices) of each setting on the command line; flags, types and defaults come
#: from the :class:`TrainSettings` fields, so a default is stated once.
TRAIN_FLAGS: dict[str, tuple[str, tuple | None]] = {
    "epochs": ("total epochs of the run: its budget, in optimiser steps x steps per epoch", None),
    "max_minutes": (
        "wall-clock safety stop: stop cleanly (checkpoint kept, rerun to continue), never a budget",
        None,
    ),
    "batch_size": ("frames per optimiser step", None),
    "lr": ("AdamW learning rate", None),
    "weight_decay": ("AdamW weight decay", None),
    "loss": ("force loss", LOSSES),
    "huber_delta": ("Huber loss threshold, eV/Å", None),
    "energy_weight": ("weight of the per-atom energy loss when the dataset has energies", None),
    "stress_weight": (
        "weight of the stress loss (eV/Å^3; periodic frames with stress labels; 0: off)",
        None,
    ),
    "split_fractions": ("train,val,test fractions of the time-block split", None),
    "split_gap": ("frames dropped between blocks", None),
    "patience": ("early stopping: epochs without a better validation force MAE", None),
    "scheduler": ("learning-rate schedule", SCHEDULERS),
    "lr_factor": ("plateau schedule: factor on a plateau", None),
    "lr_patience": ("plateau schedule: epochs of plateau", None),
    "min_lr": ("smallest learning rate", None),
    "max_grad_norm": ("clip the gradient norm (default: no clipping)", None),
    "checkpoint_every": ("also checkpoint every N batches", None),
    "seed": ("model initialisation and batch order", None),
    "dtype": ("floating-point type of the model", ("float32", "float64")),
    "split_mode": (
        "time: contiguous time blocks (trajectories); random: seeded by --split-seed (independent frames)",
        SPLIT_MODES,
    ),
    "split_seed": (
        "seed of a random split, apart from --seed so that runs of several seeds "
        "(a null control) share one split",
        None,
    ),
    "precision": (
        "float32, or the model forward under torch.autocast in bfloat16/float16 with float32 weights, "
        "energy sums, electrostatics, forces and loss (fp16-mixed: CUDA only, with a GradScaler)",
        PRECISIONS,
    ),
}


def add_train_arguments(parser, parse_fractions) -> None:
    """``--epochs``, ``--lr``... flags for every :class:`TrainSettings` field (``--split`` for
    ``split_fractions``, parsed by ``parse_fractions``); dests are the field names."""
    kinds = {"int": int, "float": float, "str": str}
    for field in dataclasses.fields(TrainSettings):
        help_text, choices = TRAIN_FLAGS[field.name]
        default = field.default
        flag = "--split" if field.name == "split_fractions" else "--" + field.name.replace("_", "-")
        kwargs: dict[str, Any] = {
            "dest": field.name,
            "default": default,
            "help": f"{help_text} (default {default})",
        }
        if field.name == "split_fractions":
            kwargs["type"] = parse_fractions
            kwargs["help"] = f"{help_text} (default {','.join(f'{v:g}' for v in default)})"
        else:
            kwargs["type"] = kinds[str(field.type).split(" |")[0]]
        if choices:
            kwargs["choices"] = choices
        parser.add_argument(flag, **kwargs)


def settings_from_args(args) -> dict[str, Any]:
    """The :class:`TrainSettings` keyword arguments of parsed :func:`add_train_arguments` flags."""
    return {field.name: getattr(args, field.name) for field in dataclasses.fields(TrainSettings)}


def _is_int(value, minimum: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum


def epoch_batches(train_idx: np.ndarray, seed: int, epoch: int, batch_size: int) -> list[np.ndarray]:
    """Frame indices of each batch of ``epoch``; the order depends only on (seed, epoch)."""
    order = train_idx[np.random.default_rng([seed, epoch]).permutation(len(train_idx))]
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimiser steps of one epoch: ``ceil(n_train / batch_size)`` (the last batch may be short)."""
    return -(-int(n_train) // int(batch_size))
