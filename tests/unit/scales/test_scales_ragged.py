"""The scale layer on ragged caches (frames of different atoms, species and boundaries).

Every per-atom, per-ion and per-frame number is checked against an independent loop over
the frames in plain numpy, with distances from ASE (``ase.geometry.get_distances``,
minimum image for periodic frames, plain distances for open ones); a fixed-layout cache
still gives bitwise the table of the code before the ragged layout (golden CSVs written
by that code) and the same numbers as its own frames stored as a ragged cache.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from ase.geometry import get_distances

from scalepool.data import PredictionCache
from scalepool.metrics import Subsets, cache_errors
from scalepool.scales import (
    ContinuousRouter,
    HardRouter,
    LeakageError,
    RoutingProblem,
    atom_features,
    scale_table,
    synthetic_cache,
)
from scalepool.units import CLOSE_CONTACT_CUTOFF, CONTACT_PAIR_DISTANCE, EV_TO_MEV

GOLDEN = Path(__file__).parent / "golden"
NA, CL, OX, H = 11, 17, 8, 1
IONS = (NA, CL)
#: frames: (periodic box edge in Å or None for open, ions, water molecules, split code)
FRAMES = [
    (9.0, [NA, CL], 6, 0),
    (None, [NA, CL, CL], 4, 0),
    (None, [], 5, 0),  # a water cluster without ions
    (10.0, [NA, NA, CL, CL], 8, 0),
    (None, [NA], 3, 0),
    (9.5, [CL, NA], 7, 1),
    (None, [NA, CL], 3, 1),
    (None, [], 4, 1),
    (10.5, [NA, CL, NA, CL], 7, 2),
    (None, [CL, NA, NA], 5, 2),
    (None, [], 6, 2),
    (8.5, [NA, CL], 5, 2),
]


def salt_frames(seed: int = 0):
    """Per-frame (positions, numbers, cell or None, split) with one contact Na-Cl pair (2.8 Å)
    in every frame with both ions; forces are drawn per frame below."""
    rng = np.random.default_rng(seed)
    frames = []
    for k, (box, ions, waters, split) in enumerate(FRAMES):
        numbers = np.array(list(ions) + [OX, H, H] * waters)
        extent = box if box is not None else 7.0
        positions = rng.uniform(0.0, extent, size=(len(numbers), 3))
        if NA in ions and CL in ions:
            na, cl = ions.index(NA), ions.index(CL)
            positions[cl] = positions[na] + 2.8 * np.array([1.0, 0.0, 0.0])
        cell = None
        if box is not None:
            cell = np.diag([box, box * 1.05, box * 0.95])
            if k % 2:
                cell[1, 0] = 1.5  # triclinic
        frames.append((positions, numbers, cell, split))
    return frames


def ragged_salt_cache(seed: int = 0, noise: float = 0.02) -> tuple[PredictionCache, list[dict]]:
    """A ragged cache of :func:`salt_frames` and the same data as a per-frame list."""
    rng = np.random.default_rng(seed + 1)
    frames = []
    for positions, numbers, cell, split in salt_frames(seed):
        n = len(numbers)
        f0 = rng.normal(size=(n, 3))
        f1 = f0 + 0.3 * rng.normal(size=(n, 3))
        s = rng.uniform(0, 1, size=(n, 1))
        ref = f0 + s * (f1 - f0) + noise * rng.normal(size=(n, 3))
        # the cache stores float32 forces: the loop compares against the same rounded values
        f0, f1, ref = (a.astype(np.float32).astype(np.float64) for a in (f0, f1, ref))
        frames.append(
            dict(positions=positions, numbers=numbers, cell=cell, split=split, f0=f0, f1=f1, ref=ref)
        )
    cache = PredictionCache(
        forces_ref=np.concatenate([f["ref"] for f in frames]),
        branches={
            "short": np.concatenate([f["f0"] for f in frames]),
            "long": np.concatenate([f["f1"] for f in frames]),
            "short_2": np.concatenate([f["f0"] + 0.05 * rng.normal(size=f["f0"].shape) for f in frames]),
        },
        numbers=np.concatenate([f["numbers"] for f in frames]),
        positions=np.concatenate([f["positions"] for f in frames]),
        cell=np.stack([np.zeros((3, 3)) if f["cell"] is None else f["cell"] for f in frames]),
        split=np.array([f["split"] for f in frames]),
        meta={"frame_index": list(range(len(frames)))},
        atom_counts=np.array([len(f["numbers"]) for f in frames]),
    )
    return cache, frames


def distances(frame, points, targets) -> np.ndarray:
    """(len(points), len(targets)) Å from ASE: minimum image on periodic frames, plain on open ones."""
    pos, cell = frame["positions"], frame["cell"]
    _, d = get_distances(pos[points], pos[targets], cell=cell, pbc=None if cell is None else True)
    return d


def loop_domains(frames) -> list[np.ndarray]:
    """Per frame, the ion-domain sample id of every atom: nearest ion (self for an ion), ids
    numbered frame after frame; a frame without ions is one sample."""
    out, start = [], 0
    for frame in frames:
        ions = np.flatnonzero(np.isin(frame["numbers"], IONS))
        n = len(frame["numbers"])
        if len(ions) == 0:
            out.append(np.full(n, start))
            start += 1
            continue
        d = distances(frame, np.arange(n), ions)
        out.append(start + d.argmin(axis=1))
        start += len(ions)
    return out


def best_loss(a: np.ndarray, d: np.ndarray) -> float:
    """min over s in [0, 1] of sum |s d - a| (convex, piecewise linear: a kink or an end is optimal)."""
    candidates = np.clip(np.concatenate([[0.0, 1.0], a[d != 0] / d[d != 0]]), 0.0, 1.0)
    return float(np.min([np.abs(s * d - a).sum() for s in candidates]))


@pytest.fixture(scope="module")
def salt():
    return ragged_salt_cache()


def test_per_atom_oracle_equals_a_loop_over_frames(salt):
    cache, frames = salt
    problem = RoutingProblem(cache, "test", "atom", "mae")
    test = [f for f in frames if f["split"] == 2]
    assert problem.n_samples == sum(len(f["numbers"]) for f in test)
    s = problem.continuous_oracle()
    got = problem.routed_sample_losses(s)
    k = 0
    for frame in test:
        a, d = frame["ref"] - frame["f0"], frame["f1"] - frame["f0"]
        for atom in range(len(a)):
            assert got[k] == pytest.approx(best_loss(a[atom], d[atom]), abs=1e-9)
            assert got[k] == pytest.approx(np.abs(s[k] * d[atom] - a[atom]).sum(), abs=1e-12)
            k += 1
    # mean at a global scale: plain numpy over the test frames' atoms
    error = np.concatenate([np.abs(f["f0"] + 0.3 * (f["f1"] - f["f0"]) - f["ref"]).ravel() for f in test])
    assert problem.routed_loss(np.full(problem.n_samples, 0.3)) == pytest.approx(error.mean(), rel=1e-12)


@pytest.mark.parametrize("split", ["train", "test"])
def test_per_ion_and_per_frame_samples_equal_a_loop_over_frames(salt, split):
    cache, frames = salt
    code = {"train": 0, "test": 2}[split]
    chosen = [f for f in frames if f["split"] == code]
    ion = RoutingProblem(cache, split, "ion", "mae")
    np.testing.assert_array_equal(ion.groups.atom_sample, np.concatenate(loop_domains(chosen)))
    oracle = ion.routed_sample_losses(ion.continuous_oracle())
    domains = np.concatenate(loop_domains(chosen))
    a = np.concatenate([f["ref"] - f["f0"] for f in chosen])
    d = np.concatenate([f["f1"] - f["f0"] for f in chosen])
    for sample in range(ion.n_samples):
        atoms = domains == sample
        assert oracle[sample] == pytest.approx(best_loss(a[atoms].ravel(), d[atoms].ravel()), abs=1e-8)

    frame = RoutingProblem(cache, split, "frame", "mae")
    assert frame.n_samples == len(chosen)
    s = np.linspace(0.1, 0.9, len(chosen))
    losses = frame.routed_sample_losses(s)
    for i, f in enumerate(chosen):
        expected = np.abs(f["f0"] + s[i] * (f["f1"] - f["f0"]) - f["ref"]).sum()
        assert losses[i] == pytest.approx(expected, rel=1e-12)


def test_subsets_use_each_frames_own_cell(salt):
    cache, frames = salt
    subsets = Subsets.of_cache(cache)
    nearest, contact = [], []
    for frame in frames:
        numbers = frame["numbers"]
        ions = np.flatnonzero(np.isin(numbers, IONS))
        n = len(numbers)
        if len(ions) == 0:
            nearest.append(np.full(n, np.inf))
        else:
            d = distances(frame, np.arange(n), ions)
            d[ions, np.arange(len(ions))] = np.inf  # an ion's nearest ion is another ion
            nearest.append(d.min(axis=1))
        mask = np.zeros(n, bool)
        for i in ions:
            counter = [j for j in ions if numbers[j] != numbers[i]]
            if counter:
                mask[i] = distances(frame, [i], counter).min() <= CONTACT_PAIR_DISTANCE
        contact.append(mask)
    nearest, contact = np.concatenate(nearest), np.concatenate(contact)
    np.testing.assert_allclose(subsets.nearest_ion, nearest, rtol=1e-10)
    np.testing.assert_array_equal(subsets.contact_ions, contact)
    np.testing.assert_array_equal(subsets.near_ion, nearest < CLOSE_CONTACT_CUTOFF)
    np.testing.assert_array_equal(subsets.ions, np.isin(cache.numbers, IONS))
    with_contact = [k for k, m in enumerate(np.split(contact, np.cumsum(cache.counts)[:-1])) if m.any()]
    assert subsets.sizes() == {"n_contact_ions": int(contact.sum()), "n_contact_frames": len(with_contact)}
    assert len(with_contact) >= 6  # every frame with both ions holds its 2.8 Å pair


def test_scale_table_on_ragged_frames_equals_a_loop(salt):
    cache, frames = salt
    table = scale_table(cache, granularity="ion", router_steps=20, soft_steps=10, max_size=4).set_index(
        "method"
    )
    test = [f for f in frames if f["split"] == 2]
    err0 = [np.abs(f["f0"] - f["ref"]) for f in test]
    flat = np.concatenate(err0)
    ions = np.concatenate([np.isin(f["numbers"], IONS) for f in test])
    row = table.loc["short only (s=0)"]
    assert row.overall_mae == pytest.approx(EV_TO_MEV * flat.mean(), rel=1e-9)
    assert row.ion_mae == pytest.approx(EV_TO_MEV * flat[ions].mean(), rel=1e-9)
    contact = Subsets.of_cache(cache.select("test")).contact_ions
    assert row.close_contact_mae == pytest.approx(EV_TO_MEV * flat[contact].mean(), rel=1e-9)
    oracle = table.loc["[0,1]-constrained continuous oracle (upper bound)", "overall_mae"]
    hard = table.loc["oracle hard routing {0,1} (upper bound)", "overall_mae"]
    assert oracle <= hard + 1e-9 <= min(row.overall_mae, table.loc["long only (s=1)", "overall_mae"]) + 2e-9
    assert "null: best global s" in table.index  # the null pair (short, short_2) is routed too
    assert np.isfinite(table.loc["learned continuous s", "overall_mae"])


def test_routers_predict_flat_scales_on_ragged_frames(salt):
    cache, frames = salt
    features, names = atom_features(cache.select("test", labels=False))
    test = [f for f in frames if f["split"] == 2]
    assert features.shape == (sum(len(f["numbers"]) for f in test), len(names))
    # the nearest-ion feature (capped at 12 Å) from ASE, frame by frame
    nearest = []
    for f in test:
        ions = np.flatnonzero(np.isin(f["numbers"], IONS))
        if len(ions) == 0:
            nearest.append(np.full(len(f["numbers"]), 12.0))
            continue
        d = distances(f, np.arange(len(f["numbers"])), ions)
        d[ions, np.arange(len(ions))] = np.inf
        nearest.append(np.minimum(d.min(axis=1), 12.0))
    np.testing.assert_allclose(features[:, 0], np.concatenate(nearest), rtol=1e-10)
    for router in (HardRouter([0.0, 0.5, 1.0], steps=10), ContinuousRouter(steps=10)):
        router.fit(cache.select("train"))
        scales = router.predict_atom_scales(cache.select("test", labels=False))
        assert scales.shape == (features.shape[0],) and ((scales >= 0) & (scales <= 1)).all()


def as_ragged(cache: PredictionCache) -> PredictionCache:
    """A fixed cache's frames stored in the ragged layout (flat arrays, every frame periodic)."""
    n_frames, n_atoms = cache.positions.shape[:2]
    return PredictionCache(
        forces_ref=cache.forces_ref.reshape(-1, 3),
        branches={k: v.reshape(-1, 3) for k, v in cache.branches.items()},
        numbers=np.tile(cache.numbers, n_frames),
        positions=cache.positions.reshape(-1, 3),
        cell=cache.cell,
        split=cache.split,
        anchors=cache.anchors,
        meta=cache.meta,
        atom_counts=np.full(n_frames, n_atoms),
    )


@pytest.mark.parametrize("granularity", ["atom", "ion"])
def test_fixed_cache_table_is_bitwise_unchanged(granularity):
    """The golden CSVs were written by the scale layer before the ragged layout existed
    (same settings, one torch thread); the fixed path must reproduce them bit for bit,
    and the same frames stored ragged must give the same table."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cache = synthetic_cache(n_frames=10, n_atoms=45, n_ions=6, seed=3)
        settings = dict(granularity=granularity, router_steps=20, soft_steps=10, max_size=4, null_pair=None)
        fixed = scale_table(cache, **settings)
        ragged = scale_table(as_ragged(cache), **settings)
    finally:
        torch.set_num_threads(previous)
    golden = pd.read_csv(GOLDEN / f"fixed_table_{granularity}.csv")
    assert list(golden.method) == list(fixed.method)
    numeric = [c for c in golden.columns if pd.api.types.is_float_dtype(golden[c]) and not c.endswith("_std")]
    for column in numeric:
        np.testing.assert_array_equal(
            fixed[column].to_numpy(float), golden[column].to_numpy(float), err_msg=column
        )
        np.testing.assert_array_equal(
            ragged[column].to_numpy(float), fixed[column].to_numpy(float), err_msg=column
        )


def test_cache_errors_of_a_ragged_cache_equal_a_loop(salt):
    cache, frames = salt
    table = cache_errors(cache, "test", nearest_ion=Subsets.of_cache(cache.select("test")).nearest_ion)
    test = [f for f in frames if f["split"] == 2]
    train = [f for f in frames if f["split"] == 0]
    numbers = np.concatenate([f["numbers"] for f in test])
    error = np.concatenate([f["f0"] - f["ref"] for f in test])
    assert table.loc["overall", "short MAE"] == pytest.approx(EV_TO_MEV * np.abs(error).mean(), rel=1e-6)
    assert table.loc["Na", "short MAE"] == pytest.approx(
        EV_TO_MEV * np.abs(error[numbers == NA]).mean(), rel=1e-6
    )
    assert table.loc["overall", "n_atoms"] == len(numbers)
    # baseline: the mean train force of each species, predicted for every test atom of that species
    ref = np.concatenate([f["ref"] for f in test])
    baseline = np.zeros_like(ref)
    for z in np.unique(numbers):
        seen = np.concatenate([f["ref"][f["numbers"] == z] for f in train])
        baseline[numbers == z] = seen.mean(axis=0)
    assert table.loc["overall", "baseline MAE"] == pytest.approx(
        EV_TO_MEV * np.abs(baseline - ref).mean(), rel=1e-6
    )


def test_routers_refuse_frames_outside_a_recorded_random_split(salt):
    cache, _ = salt
    recorded = {name: cache.frames(name).tolist() for name in ("train", "val", "test")}
    cache = dataclasses.replace(cache, meta={**cache.meta, "split_frames": recorded})
    ContinuousRouter(steps=2).fit(cache.select("train"))  # the recorded train frames: accepted
    relabelled = dataclasses.replace(cache, split=np.where(np.arange(cache.n_frames) == 5, 0, cache.split))
    with pytest.raises(
        LeakageError, match=r"1 frame\(s\) marked train are not train frames of the random split"
    ):
        ContinuousRouter(steps=2).fit(relabelled.select("train"))
