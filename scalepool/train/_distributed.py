"""Data-parallel training on ``torch.distributed``: ranks from the environment, batch shards, reductions.

``torchrun --nproc_per_node=K scalepool train ...`` (or ``srun`` with the
variables below) starts K copies of the same training command.  Each copy is a
*rank*; :func:`init_ranks` reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` (set by torchrun) and joins the process
group: gloo on CPU, NCCL on GPU (rank ``LOCAL_RANK`` of a node uses
``cuda:LOCAL_RANK``).  Without ``WORLD_SIZE`` > 1 training runs in one process
and nothing here changes what it computes.

How K ranks compute what one process computes with the same settings:

- ``batch_size`` stays the *global* batch (frames per optimiser step) and the
  batch order stays :func:`epoch_batches` of ``(seed, epoch)``; rank ``r``
  takes part ``r`` of ``numpy.array_split(batch, K)`` (:meth:`Ranks.shard`),
  so the same seed gives the same shards.
- The losses are means over a shard's elements (force components, frames).
  DistributedDataParallel averages gradients over ranks, and the mean of the
  per-rank means is the global mean only for equal shards, so each rank's loss
  is multiplied by ``K * n_shard / n_batch`` (:meth:`Ranks.loss_weight`): the
  average of the weighted losses, and of their gradients, is then the loss of
  the whole batch, whatever the shard sizes (a short last batch, a batch size
  that K does not divide).  Every shard must hold a frame.
- Validation frames are split the same way; the absolute errors are summed
  over all ranks before dividing (:func:`evaluate_sharded`).

Results equal a one-process run to float round-off (sums grouped otherwise),
and a resumed K-rank run equals an uninterrupted K-rank run bit for bit.
Rank 0 alone reads and writes the run folder; what it decides (resume or not,
the checkpoint's state, the safety stop, a failed write) is broadcast so that
every rank takes the same path and none waits forever for a rank that stopped.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..data import FrameSet
from ..units import EV_TO_MEV
from ._common import NonFiniteError, TrainError
from ._predict import predict_forces

#: The environment of a distributed launch (torchrun sets them all; srun users export them).
ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclasses.dataclass
class Ranks:
    """This process's place among the ranks of a training run (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # the group was created here and is destroyed by close()

    @property
    def main(self) -> bool:
        """Rank 0: the one that reads and writes the run folder."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.world_size > 1

    def describe(self) -> dict[str, Any]:
        """What ``config.json`` records of the launch."""
        return {"world_size": self.world_size, "backend": self.backend}

    # ------------------------------------------------------------ shards
    def shard(self, index: np.ndarray) -> np.ndarray:
        """This rank's frames of a global batch ``index`` (n,): part ``rank`` of ``array_split(index, K)``."""
        return np.array_split(np.asarray(index), self.world_size)[self.rank]

    def loss_weight(self, n_shard: int, n_batch: int) -> float:
        """``K * n_shard / n_batch``: the factor that makes the rank average of shard-mean losses the
        batch-mean loss (1.0 in one process)."""
        return self.world_size * n_shard / n_batch if self.parallel else 1.0

    # ------------------------------------------------------- collectives
    def mean(self, value: float) -> float:
        """Average of ``value`` over the ranks, summed in rank order (the same float on every rank)."""
        if not self.parallel:
            return value
        values = self._gather(torch.tensor([value], dtype=torch.float64))
        return float(sum(float(v) for v in values[:, 0])) / self.world_size

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.parallel:
            return value
        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0, device=self._object_device())
        return box[0]

    def on_main(self, work: Callable[[], Any], share: bool = False) -> Any:
        """Run ``work`` on rank 0 only; a :class:`TrainError` it raises is raised on every rank.

        Returns ``work()``'s result on rank 0, and on every rank when ``share``.
        """
        result, failure = None, None
        if self.main:
            try:
                result = work()
            except TrainError as err:
                failure = err
        if not self.parallel:
            if failure is not None:
                raise failure
            return result
        if share:
            outcome = self.from_main((result, _describe(failure)))
            result, message = outcome
        else:
            message = self.from_main(_describe(failure))
        if failure is not None:
            raise failure
        if message is not None:
            kind, text = message
            cls = NonFiniteError if kind == "NonFiniteError" else TrainError
            raise cls(f"rank 0 stopped the run: {text}")
        return result

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order."""
        if not self.parallel:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def close(self, clean: bool = True) -> None:
        """Leave the process group when :func:`init_ranks` created it.

        clean : every rank got here the same way (no exception): wait for all before tearing the
            connections down; after an exception a barrier could pair with another rank's
            pending collective, so the group is left at once
        """
        if self.owns_group and dist.is_initialized():
            try:
                if clean:
                    dist.barrier()
            finally:
                dist.destroy_process_group()
            self.owns_group = False

    def _gather(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self._object_device())
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor)
        return torch.stack(parts).cpu()

    def _object_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")


def _describe(error: TrainError | None) -> tuple[str, str] | None:
    return None if error is None else (type(error).__name__, str(error))


def _env_int(name: str, default: int | None = None) -> int:
    text = os.environ.get(name)
    if text is None:
        if default is None:
            raise TrainError(
                f"distributed training: WORLD_SIZE is set but {name} is not; launch with torchrun, or "
                f"export {', '.join(ENVIRONMENT)} for every task (srun: RANK=$SLURM_PROCID ...)"
            )
        return default
    try:
        return int(text)
    except ValueError:
        raise TrainError(
            f"distributed training: environment variable {name}={text!r} is not an integer"
        ) from None


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """The device of the rank ``local_rank`` of a node: ``cuda`` becomes ``cuda:LOCAL_RANK`` (``cuda:0``
    when each task sees one GPU, as with ``srun --gpus-per-task=1``); CPU stays CPU."""
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if device.index is not None:
        raise TrainError(
            f"device {str(device)!r} names one GPU, but every rank would use it; pass --device cuda and "
            "each rank takes cuda:LOCAL_RANK"
        )
    if count == 1:
        return torch.device("cuda", 0)
    if local_rank >= count:
        raise TrainError(
            f"LOCAL_RANK {local_rank} has no GPU: this node has {count}; start at most {count} ranks per node"
        )
    return torch.device("cuda", local_rank)


def init_ranks(device: torch.device) -> tuple[Ranks, torch.device]:
    """This process's :class:`Ranks` and training device, joining the process group when launched
    with ``WORLD_SIZE`` > 1 (or using one the caller already initialised)."""
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        local = _env_int("LOCAL_RANK", rank)
        device = rank_device(device, local) if world > 1 else device
        ranks = Ranks(rank, world, local, dist.get_backend(), device, owns_group=False)
        return ranks, device
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Ranks(device=device), device
    if not dist.is_available():
        raise TrainError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank, local = _env_int("RANK"), _env_int("LOCAL_RANK")
    if not 0 <= rank < world:
        raise TrainError(f"distributed training: RANK={rank} must lie in [0, WORLD_SIZE={world})")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise TrainError(
                f"distributed training: WORLD_SIZE={world} but {name} is not set; torchrun sets it, "
                "under srun export MASTER_ADDR (the first node's host name) and MASTER_PORT"
            )
    device = rank_device(device, local)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
    return Ranks(rank, world, local, backend, device, owns_group=True), device


def check_shards(ranks: Ranks, n_train: int, batch_size: int) -> None:
    """Refuse batches with fewer frames than ranks (a rank would have nothing to train on)."""
    if not ranks.parallel:
        return
    last = n_train % batch_size or batch_size
    smallest = min(batch_size, last, n_train)
    if smallest < ranks.world_size:
        raise TrainError(
            f"{ranks.world_size} ranks need at least {ranks.world_size} frames in every batch, but "
            f"batch_size={batch_size} over {n_train} training frames gives a batch of {smallest}; "
            "raise batch_size, or choose one whose remainder is 0 or at least the number of ranks"
        )


def evaluate_sharded(model, frames: FrameSet, indices, ranks: Ranks, **kwargs) -> dict[str, float]:
    """:func:`scalepool.train.evaluate_forces` with the frames ``indices`` split over the ranks.

    Returns the same ``{"force_mae_meV_A", "energy_mae_meV_atom"}`` on every rank: absolute errors
    are summed in float64 on each rank and over ranks (in rank order) before dividing.  A rank's
    non-finite prediction raises :class:`TrainError` on every rank, naming its frames.
    """
    idx = ranks.shard(np.atleast_1d(np.asarray(indices)))
    local: dict[str, Any] = {"error": None}
    try:
        pred = predict_forces(model, frames, idx, **kwargs)
        ref = frames.forces_flat[frames.atom_index(idx)] if frames.ragged else frames.forces[idx]
        local["force"] = float(np.abs(pred["forces"].astype(np.float64) - ref).sum())
        local["components"] = int(pred["forces"].size)
        if frames.energy is not None:  # per-atom errors of each frame (ragged: each its own count)
            local["energy"] = float(
                (np.abs(pred["energy"] - frames.energy[idx]) / frames.atom_counts[idx]).sum()
            )
    except TrainError as err:
        local["error"] = f"rank {ranks.rank}: {err}"
    parts = ranks.gather_objects(local)
    errors = [part["error"] for part in parts if part["error"] is not None]
    if errors:
        raise TrainError("; ".join(errors))
    n_val = len(np.atleast_1d(np.asarray(indices)))
    force = sum(part["force"] for part in parts) / max(sum(part["components"] for part in parts), 1)
    energy_mae = float("nan")
    if frames.energy is not None:
        energy_mae = sum(part["energy"] for part in parts) / max(n_val, 1) * EV_TO_MEV
    return {"force_mae_meV_A": force * EV_TO_MEV, "energy_mae_meV_atom": energy_mae}
