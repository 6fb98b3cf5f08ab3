"""Mixed precision of model forwards: ``float32`` (default), ``bf16-mixed``, ``fp16-mixed``.

Under a mixed precision the model's forward runs inside
``torch.autocast(device_type, dtype)``: the linear layers (the matrix products
that set the cost on a GPU) run in bfloat16 or float16.  Everything whose
precision decides the physics stays float32, whatever the setting:

- weights (the optimiser updates float32 masters), positions, cell, edge
  vectors and distances (float32 inputs; autocast leaves them alone);
- neighbour sums of messages (``scalepool.models`` edge kernels accumulate in
  at least float32), per-atom energies (cast to float32 in the readout before
  the per-frame sum), the long branch's Ewald/PME electrostatics (autocast is
  switched off around it);
- forces, the autograd gradient of the float32 energy with respect to float32
  positions, and the loss.

``float32`` never enters autocast: its path is the one without this module,
bit for bit.  ``fp16-mixed`` needs CUDA (CPU autocast has no float16 kernels
worth using) and a :class:`torch.amp.GradScaler` in training, because float16
gradients underflow; bfloat16 has float32's exponent range and needs none.
Weights stay float32, so a model file does not depend on the precision it was
trained with.
"""

from __future__ import annotations

import contextlib

import torch

from ._common import TrainError

#: Names accepted by ``--precision`` and ``precision=``.
PRECISIONS = ("float32", "bf16-mixed", "fp16-mixed")
_AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}


def check_precision(precision: str, device: str | torch.device | None = None, dtype=None) -> str:
    """Validate a precision request; returns it.

    device : where the model runs (``fp16-mixed`` needs ``cuda``); ``None`` skips that check
    dtype : the model's float type; a mixed precision needs float32 weights and positions
    """
    if precision not in PRECISIONS:
        raise TrainError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if device is not None and precision == "fp16-mixed" and torch.device(device).type != "cuda":
        raise TrainError(
            f"precision 'fp16-mixed' needs a CUDA device (float16 autocast with a GradScaler); got device "
            f"{str(device)!r}. On the CPU use --precision bf16-mixed or float32"
        )
    if dtype is not None and precision != "float32" and dtype != torch.float32 and str(dtype) != "float32":
        raise TrainError(
            f"precision {precision!r} runs a float32 model under autocast; got dtype {dtype}: "
            "use --dtype float32 (a float32 model) with a mixed precision"
        )
    return precision


def autocast(precision: str, device: str | torch.device):
    """The context a forward of ``precision`` runs in on ``device``.

    ``float32``: a no-op context (autocast is never entered); ``bf16-mixed`` /
    ``fp16-mixed``: ``torch.autocast(device.type, bfloat16 / float16)``.
    """
    check_precision(precision, device)
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_AUTOCAST_DTYPES[precision])


def grad_scaler(precision: str, device: str | torch.device) -> torch.amp.GradScaler | None:
    """A :class:`torch.amp.GradScaler` for ``fp16-mixed`` training, else ``None`` (float32, bfloat16)."""
    if check_precision(precision, device) != "fp16-mixed":
        return None
    return torch.amp.GradScaler(torch.device(device).type)
