"""Data-parallel pieces that need no process group: shards, the loss weighting, launch errors.

The weighting is checked against its definition, not against itself: the
average over K ranks of the weighted shard losses (and of their gradients,
which DistributedDataParallel averages) must equal the loss and gradient of
the whole batch computed in one piece, for unequal shards, every loss, and
frames of different sizes (ragged).  Real processes are in
``tests/integration/test_ddp.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from standins import PairModel, make_frames

from scalepool.data import FrameSet
from scalepool.testing import TOLERANCES, random_frames
from scalepool.train import TrainError, TrainSettings, evaluate_forces
from scalepool.train._distributed import Ranks, check_shards, evaluate_sharded, init_ranks, rank_device
from scalepool.train._objective import BatchLoss
from scalepool.train._settings import epoch_batches

F64 = TOLERANCES[torch.float64]


@pytest.mark.parametrize("world", [2, 3, 4])
def test_shards_cover_the_batch_in_rank_order_and_follow_the_seed(world):
    train_idx = np.arange(17)
    for epoch in range(3):
        batches = epoch_batches(train_idx, 5, epoch, 7)
        again = epoch_batches(train_idx, 5, epoch, 7)
        for batch, same in zip(batches, again, strict=True):
            shards = [Ranks(rank, world).shard(batch) for rank in range(world)]
            np.testing.assert_array_equal(np.concatenate(shards), batch)
            sizes = [len(s) for s in shards]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
            np.testing.assert_array_equal(Ranks(1, world).shard(same), shards[1])
    assert Ranks().shard(np.arange(5)).tolist() == [0, 1, 2, 3, 4]  # one process: the whole batch


def _loss_and_grad(frames, settings, ranks, index, shard):
    torch.manual_seed(0)
    model = PairModel(seed=0).double()
    model.species_shift.fill_(-0.125)
    model.train()
    loss = BatchLoss(model, frames, settings, ranks, "cpu", torch.float64)(index, shard)["loss"]
    (grad,) = torch.autograd.grad(loss, model.coupling)
    return float(loss.detach()), grad.numpy()


def _ragged(n_frames=5):
    """Periodic frames of 6 to 14 atoms in the ragged layout, random reference forces and energies."""
    parts = [
        random_frames(n_atoms=6 + 2 * i, box=7.0, n_frames=1, seed=i, triclinic=False)
        for i in range(n_frames)
    ]
    rng = np.random.default_rng(1)
    positions = np.concatenate([p.positions.reshape(-1, 3) for p in parts])
    numbers = np.concatenate([np.resize([1, 8, 11, 17], p.n_atoms) for p in parts])
    return FrameSet(
        positions, rng.normal(size=positions.shape), numbers,
        cell=np.concatenate([p.cell for p in parts]), energy=rng.normal(size=n_frames),
        atom_counts=[p.n_atoms for p in parts],
    )  # fmt: skip


@pytest.mark.parametrize("loss", ["mae", "mse", "huber"])
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("layout", ["fixed", "ragged"])
def test_rank_average_of_weighted_shard_losses_is_the_batch_loss(loss, world, layout):
    frames = make_frames(n_frames=6) if layout == "fixed" else _ragged()
    settings = TrainSettings(loss=loss, energy_weight=0.3, dtype="float64")
    index = np.array([4, 0, 3, 1, 2])  # 5 frames: shards of 3 + 2, or 2 + 2 + 1
    whole, whole_grad = _loss_and_grad(frames, settings, Ranks(), index, index)
    parts = [
        _loss_and_grad(frames, settings, Ranks(r, world), index, Ranks(r, world).shard(index))
        for r in range(world)
    ]
    np.testing.assert_allclose(np.mean([p[0] for p in parts]), whole, **F64)
    np.testing.assert_allclose(np.mean([p[1] for p in parts], axis=0), whole_grad, **F64)
    # without the weights the rank average is another number (the check can fail)
    plain = [
        _loss_and_grad(frames, settings, Ranks(), index, Ranks(r, world).shard(index))[0]
        for r in range(world)
    ]
    assert abs(np.mean(plain) - whole) > 1e-6 * abs(whole)


def test_batches_smaller_than_the_ranks_are_refused():
    check_shards(Ranks(), 3, 1)  # one process: anything goes
    check_shards(Ranks(0, 2), 18, 5)  # 5, 5, 5, 3
    with pytest.raises(TrainError, match=r"2 ranks need at least 2 frames in every batch.*batch of 1"):
        check_shards(Ranks(0, 2), 16, 5)  # the last batch holds 1 frame
    with pytest.raises(TrainError, match=r"4 ranks .* batch of 2"):
        check_shards(Ranks(0, 4), 16, 2)


def test_launch_environment(monkeypatch):
    cpu = torch.device("cpu")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert init_ranks(cpu) == (Ranks(device=cpu), cpu)  # no launcher: one process
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not init_ranks(cpu)[0].parallel
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(TrainError, match="WORLD_SIZE is set but RANK is not"):
        init_ranks(cpu)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(TrainError, match=r"RANK=2 must lie in \[0, WORLD_SIZE=2\)"):
        init_ranks(cpu)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(TrainError, match="MASTER_ADDR is not set"):
        init_ranks(cpu)
    monkeypatch.setenv("RANK", "one")
    with pytest.raises(TrainError, match="RANK='one' is not an integer"):
        init_ranks(cpu)
    assert rank_device(cpu, 3) == cpu
    with pytest.raises(TrainError, match="names one GPU, but every rank would use it"):
        rank_device(torch.device("cuda:1"), 0)


@pytest.mark.parametrize("layout", ["fixed", "ragged"])
def test_validation_summed_over_ranks_equals_one_process(layout):
    """Each rank's error sums, joined as the process group would, give the one-process MAEs."""
    frames = make_frames(n_frames=7) if layout == "fixed" else _ragged(7)
    model = PairModel(seed=0).double()
    model.species_shift.fill_(-0.125)
    index = np.array([6, 1, 2, 5, 0])
    options = {"batch_size": 2, "dtype": torch.float64}

    class Recorder(Ranks):  # rank 1: what it would send
        def gather_objects(self, value):
            self.sent = value
            return [value] * self.world_size

    class Joined(Ranks):  # rank 0: receives rank 1's part
        def gather_objects(self, value):
            return [value, rank1.sent]

    rank1 = Recorder(1, 2)
    evaluate_sharded(model, frames, index, rank1, **options)
    joined = evaluate_sharded(model, frames, index, Joined(0, 2), **options)
    whole = evaluate_forces(model, frames, index, **options)
    assert set(joined) == set(whole)
    for key, value in whole.items():
        np.testing.assert_allclose(joined[key], value, **F64, err_msg=key)
    # a rank whose prediction fails stops every rank with its message
    rank1.sent = {**rank1.sent, "error": "rank 1: non-finite forces for frame(s) [5]"}
    with pytest.raises(TrainError, match=r"rank 1: non-finite forces for frame\(s\) \[5\]"):
        evaluate_sharded(model, frames, index, Joined(0, 2), **options)
