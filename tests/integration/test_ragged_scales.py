"""Any dataset in, any engine out: a ragged salt dataset (open Na/Cl water clusters beside periodic
rock-salt cells of different sizes, labelled by ASE's Lennard-Jones calculator) through
``train --split random`` -> ``predict`` -> ``table`` -> ``mix`` -> ``evaluate``, with every
per-atom number checked frame by frame through the ASE calculator on the saved models."""

import json

import numpy as np
import pandas as pd
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.lj import LennardJones

from scalepool.cli import main
from scalepool.data import FrameSet, PredictionCache
from scalepool.md import ScalepoolCalculator
from scalepool.units import EV_TO_MEV

TINY = ["--model-option", "n_features=4", "--model-option", "n_interactions=1", "--model-option", "n_rbf=4",
        "--cutoff", "3.0", "--no-progress"]  # fmt: skip
WATER = np.array([[0.0, 0.0, 0.0], [0.757, 0.586, 0.0], [-0.757, 0.586, 0.0]])  # Å, O H H


def salt_cluster(n_waters: int, ions: list[str], rng) -> Atoms:
    """Ions and waters (centres at least 2.9 Å apart) in open space."""
    centres: list[np.ndarray] = []
    while len(centres) < n_waters + len(ions):
        c = rng.uniform(-1, 1, 3) * 2.4 * (n_waters + len(ions)) ** (1 / 3)
        if all(np.linalg.norm(c - p) > 2.9 for p in centres):
            centres.append(c)
    atoms = Atoms()
    for k, c in enumerate(centres):
        if k < len(ions):
            atoms += Atoms(ions[k], positions=[c])
        else:
            atoms += Atoms("OH2", positions=WATER @ np.linalg.qr(rng.normal(size=(3, 3)))[0].T + c)
    return atoms


def salt_images(n: int = 12, seed: int = 0) -> list[Atoms]:
    """Open clusters and periodic NaCl cells (8 and 16 atoms), LJ-labelled."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        if i % 3 == 2:
            atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat((1 + i % 2, 1, 1))
        else:
            atoms = salt_cluster(1 + (2 * i) % 5, [["Na", "Cl"], ["Na"], ["Cl", "Na"], ["Cl"]][i % 4], rng)
        atoms.rattle(0.05, seed=seed * 100 + i)
        atoms.calc = LennardJones(sigma=0.7, epsilon=0.05, rc=5.0, smooth=True)
        forces = atoms.get_forces()
        atoms.calc = None
        atoms.arrays["REF_forces"] = forces
        images.append(atoms)
    return images


def model_forces(model_path, atoms: Atoms) -> np.ndarray:
    atoms = atoms.copy()
    atoms.calc = ScalepoolCalculator.from_file(model_path)
    return atoms.get_forces()


def test_ragged_random_split_through_predict_table_and_mix(tmp_path, capsys):
    images = salt_images()
    assert len({len(a) for a in images}) > 4 and {a.pbc.all() for a in images} == {True, False}
    data = tmp_path / "salt.npz"
    frames = FrameSet.from_atoms(images)
    assert frames.ragged
    frames.save(data)
    # a random split is seeded by --split-seed, not --seed: two seeds of one branch (a null
    # control) share it
    runs = [tmp_path / "short", tmp_path / "short_longer"]
    for seed, (epochs, run) in enumerate(zip((2, 3), runs, strict=True)):
        argv = ["train", "--branch", "short", "--data", data, "--out", run, "--epochs", epochs, "--batch-size", "4",
                "--split", "random", "--seed", seed, "--split-seed", "1", "--threads", "1", *TINY]  # fmt: skip
        assert main([str(a) for a in argv]) == 0

    # predict: a ragged cache whose rows are the recorded random split, frame by frame
    pred = tmp_path / "pred.npz"
    assert main(["predict", "--run", str(runs[0]), "--run", str(runs[1]), "--data", str(data), "--out", str(pred),
                 "--no-progress"]) == 0  # fmt: skip
    cache = PredictionCache.load(pred)
    config = json.loads((runs[0] / "config.json").read_text())
    indices = config["split"]["indices"]
    assert cache.ragged and cache.meta["split_mode"] == "random"
    assert cache.meta["frame_index"] == indices["train"] + indices["val"] + indices["test"]
    expected_split = [0] * len(indices["train"]) + [1] * len(indices["val"]) + [2] * len(indices["test"])
    assert cache.split.tolist() == expected_split
    rows = np.cumsum([0] + [len(images[i]) for i in cache.meta["frame_index"]])
    for row, frame in enumerate(cache.meta["frame_index"]):
        atoms, part = images[frame], slice(rows[row], rows[row + 1])
        np.testing.assert_array_equal(cache.numbers[part], atoms.numbers)
        np.testing.assert_allclose(cache.forces_ref[part], atoms.arrays["REF_forces"], rtol=1e-6, atol=1e-7)
        for name, run in zip(("short", "short_2"), runs, strict=True):
            np.testing.assert_allclose(
                cache.branches[name][part], model_forces(run / "best.pt", atoms), rtol=1e-4, atol=1e-5
            )

    # table: the single-branch rows equal the calculator's errors on the recorded test frames
    csv = tmp_path / "table.csv"
    argv = ["table", "--pred", pred, "--csv", csv, "--granularity", "ion", "--router-steps", "20",
            "--null-pair", "none", "--max-size", "4"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    table = pd.read_csv(csv).set_index("method")
    test = [images[i] for i in indices["test"]]
    errors = np.concatenate(
        [np.abs(model_forces(runs[0] / "best.pt", a) - a.arrays["REF_forces"]) for a in test]
    )
    ions = np.concatenate([np.isin(a.numbers, (11, 17)) for a in test])
    row = table.loc["short only (s=0)"]
    assert row.overall_mae == pytest.approx(errors.mean() * EV_TO_MEV, rel=1e-4)
    assert row.ion_mae == pytest.approx(errors[ions].mean() * EV_TO_MEV, rel=1e-4)
    assert table.loc["[0,1]-constrained continuous oracle (upper bound)", "overall_mae"] <= row.overall_mae

    # mix: fitted on the random split's train frames only, evaluated on its test frames
    mixed = tmp_path / "mixed.pt"
    argv = ["mix", "--pred", pred, "--out", mixed, "--steps", "3", "--router-steps", "10", "--monitor-frames", "4",
            "--frames-per-step", "2", "--threads", "1", "--no-progress"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    record = json.loads((tmp_path / "mixed.pt.json").read_text())
    assert record["split_frames"]["train"] == indices["train"]
    assert set(record["fit"]["monitor_index"]) <= set(indices["train"])
    report = tmp_path / "mixed.json"
    capsys.readouterr()
    assert main(["evaluate", "--model", str(mixed), "--data", str(data), "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert "random split" in result["split_source"] and result["n_frames"] == len(indices["test"])
    mixed_errors = np.concatenate([np.abs(model_forces(mixed, a) - a.arrays["REF_forces"]) for a in test])
    assert result["overall_mae"] == pytest.approx(mixed_errors.mean() * EV_TO_MEV, rel=1e-4)
