"""Training of force branches (checkpoints, resume, early stopping) and the prediction cache."""

from ._common import (
    BEST,
    CHECKPOINT,
    CONFIG,
    HISTORY,
    LAST,
    NonFiniteError,
    TrainError,
    resolve_device,
    resolve_dtype,
)
from ._evaluate import SPLITS, evaluate_model, record_path, recorded_split
from ._loop import TrainResult, train
from ._precision import PRECISIONS, autocast, check_precision, grad_scaler
from ._predict import cache_from_forces, cache_rows, evaluate_forces, predict_cache, predict_forces
from ._run_config import read_run_config
from ._settings import LOSSES, SCHEDULERS, TRAIN_FLAGS, TrainSettings, add_train_arguments, settings_from_args
from ._state import HISTORY_COLUMNS

__all__ = [
    "PRECISIONS",
    "autocast",
    "check_precision",
    "grad_scaler",
    "TRAIN_FLAGS",
    "add_train_arguments",
    "settings_from_args",
    "SPLITS",
    "evaluate_model",
    "record_path",
    "recorded_split",
    "BEST",
    "CHECKPOINT",
    "CONFIG",
    "HISTORY",
    "HISTORY_COLUMNS",
    "LAST",
    "LOSSES",
    "SCHEDULERS",
    "NonFiniteError",
    "TrainError",
    "TrainResult",
    "TrainSettings",
    "cache_from_forces",
    "cache_rows",
    "evaluate_forces",
    "predict_cache",
    "predict_forces",
    "read_run_config",
    "resolve_device",
    "resolve_dtype",
    "train",
]
