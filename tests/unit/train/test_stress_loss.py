"""The optional stress loss (``stress_weight``): the right quantity, and clear refusals.

The stress term of the training loss is checked against the strain derivative of
the model's energy taken by central finite differences (ASE convention: sigma =
(1/V) dE/d eps, positions and cell rows strained as r (1 + eps)), not against
the model's own autograd stress.  A tiny real branch (``short``) is the model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalepool.data import FrameSet
from scalepool.models import AtomsBatch, build_branch
from scalepool.testing import TOLERANCES, random_frames
from scalepool.train import TrainError, TrainSettings, train
from scalepool.train._distributed import Ranks
from scalepool.train._objective import BatchLoss

WIDTH = {"n_features": 8, "n_interactions": 1, "n_rbf": 4}
SETTINGS = {
    "epochs": 2,
    "batch_size": 2,
    "lr": 5e-3,
    "split_fractions": (0.5, 0.25, 0.25),
    "checkpoint_every": None,
    "patience": None,
    "progress": False,
    "dtype": "float64",
}


def _model(seed: int):
    torch.manual_seed(seed)
    return build_branch("short", **WIDTH).double()


@pytest.fixture(scope="module")
def frames() -> FrameSet:
    """8 triclinic periodic frames labelled (forces, energy, stress) by another seed of the branch."""
    base = random_frames(n_atoms=8, box=7.0, n_frames=8, seed=0, triclinic=True)
    teacher = _model(123).eval()
    out = teacher(AtomsBatch.from_frameset(base, dtype=torch.float64), compute_stress=True)
    return FrameSet(
        base.positions, out["forces"].detach().numpy().reshape(base.positions.shape), base.numbers,
        cell=base.cell, energy=out["energy"].detach().numpy(), stress=out["stress"].detach().numpy(),
    )  # fmt: skip


def _energy(model, positions, numbers, cell) -> float:
    batch = AtomsBatch.from_arrays(positions[None], numbers, cell[None], dtype=torch.float64)
    return float(model(batch, compute_forces=False)["energy"][0].detach())


def finite_difference_stress(model, frames: FrameSet, frame: int, h: float = 1e-5) -> np.ndarray:
    """(3, 3) eV/Å^3: (E(+h) - E(-h)) / (2 h V) for each symmetric strain component."""
    positions, cell, numbers = frames.positions[frame], frames.cell[frame], frames.numbers
    volume = abs(np.linalg.det(cell))
    sigma = np.zeros((3, 3))
    for i in range(3):
        for j in range(i, 3):
            e = np.zeros((3, 3))
            e[i, j] = e[j, i] = 1.0 if i == j else 0.5
            energies = [_energy(model, positions @ (np.eye(3) + s * h * e), numbers, cell @ (np.eye(3) + s * h * e))
                        for s in (1.0, -1.0)]  # fmt: skip
            sigma[i, j] = sigma[j, i] = (energies[0] - energies[1]) / (2 * h * volume)
    return sigma


@pytest.mark.parametrize("loss", ["mae", "mse"])
def test_stress_term_is_the_finite_difference_stress_error(frames, loss):
    model = _model(0)
    model.train()
    index = np.array([1, 4, 6])
    weight = 7.0

    def batch_loss(stress_weight):
        settings = TrainSettings(loss=loss, energy_weight=0.2, stress_weight=stress_weight, dtype="float64")
        return float(
            BatchLoss(model, frames, settings, Ranks(), "cpu", torch.float64)(index, index)["loss"].detach()
        )

    model.eval()
    numeric = np.stack([finite_difference_stress(model, frames, f) for f in index])
    model.train()
    error = numeric - frames.stress[index]
    expected = np.abs(error).mean() if loss == "mae" else np.square(error).mean()
    assert abs(expected) > 1e-8  # the labels differ from the model: the term is not zero
    # finite differences with h = 1e-5 in float64: truncation ~h^2 |E'''|, round-off ~1e-16 E / h
    np.testing.assert_allclose(batch_loss(weight) - batch_loss(0.0), weight * expected, rtol=1e-6, atol=1e-12)


def test_stress_training_runs_records_and_refuses_other_weights(frames, tmp_path):
    result = train(_model(0), frames, tmp_path, stress_weight=10.0, **SETTINGS)
    assert result.stop_reason == "completed" and np.isfinite(result.history["train_loss"]).all()
    from scalepool.train import read_run_config

    assert read_run_config(tmp_path)["request"]["stress_weight"] == 10.0
    with pytest.raises(
        TrainError, match=r"different settings \(stress_weight: checkpoint 10.0 vs requested 1.0\)"
    ):
        train(_model(0), frames, tmp_path, stress_weight=1.0, **SETTINGS)
    # off by default: the request of runs from before the stress loss is unchanged
    assert "stress_weight" not in TrainSettings().request("short", {})
    assert TrainSettings(stress_weight=0.5).request("short", {})["stress_weight"] == 0.5
    with pytest.raises(TrainError, match="stress_weight must be >= 0"):
        TrainSettings(stress_weight=-1.0)


def test_stress_weight_without_labels_is_refused(frames, tmp_path):
    unlabelled = FrameSet(
        frames.positions, frames.forces, frames.numbers, cell=frames.cell, energy=frames.energy
    )
    with pytest.raises(
        TrainError, match=r"stress_weight=1.0 \(--stress-weight\) but the dataset has no stress labels"
    ):
        train(_model(0), unlabelled, tmp_path / "run", stress_weight=1.0, **SETTINGS)
    assert not (tmp_path / "run").exists()
    open_frames = random_frames(n_atoms=8, n_frames=4, periodic=False)
    with pytest.raises(TrainError, match="no stress labels"):
        train(_model(0), open_frames, tmp_path / "open", stress_weight=1.0, **SETTINGS)
    # weight 0 trains without labels as before
    train(_model(0), unlabelled, tmp_path / "plain", **{**SETTINGS, "epochs": 1})


def test_rank_average_with_stress_is_the_batch_loss(frames):
    """On 2 ranks with unequal shards (3 + 2 frames) the weighted stress term still averages to the batch's."""
    settings = TrainSettings(stress_weight=5.0, energy_weight=0.2, dtype="float64")
    index = np.array([0, 2, 3, 5, 7])

    def loss_and_grad(ranks, shard):
        model = _model(0)
        model.train()
        loss = BatchLoss(model, frames, settings, ranks, "cpu", torch.float64)(index, shard)["loss"]
        grads = torch.autograd.grad(
            loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True
        )
        return float(loss.detach()), np.concatenate([g.reshape(-1).numpy() for g in grads if g is not None])

    whole = loss_and_grad(Ranks(), index)
    parts = [loss_and_grad(Ranks(r, 2), Ranks(r, 2).shard(index)) for r in range(2)]
    tol = TOLERANCES[torch.float64]
    np.testing.assert_allclose((parts[0][0] + parts[1][0]) / 2, whole[0], **tol)
    np.testing.assert_allclose((parts[0][1] + parts[1][1]) / 2, whole[1], **tol)
