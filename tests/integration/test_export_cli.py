"""``scalepool export``: a saved model file to one torch.export archive, checked and loadable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scalepool.cli import main
from scalepool.data import FrameSet
from scalepool.export import SIGNATURE, load_exported, reference_energy_forces
from scalepool.models import build_branch, save_model
from scalepool.testing import water_box


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export_cli")
    frames = water_box(box=12.0, n_ion_pairs=2, n_frames=2)
    frames = FrameSet(
        positions=frames.positions, forces=frames.forces, numbers=frames.numbers, cell=frames.cell, meta={}
    )
    frames.save(folder / "box.npz")
    model = build_branch("short", n_features=8, n_interactions=1)
    with torch.no_grad():
        model.species_scale.fill_(0.5)
        model.species_shift[[1, 8, 11, 17]] = torch.tensor([-0.3, -2.0, -1.0, -1.5])
    save_model(model, folder / "short.pt")
    return folder, frames, model


@pytest.mark.slow
def test_export_command_writes_a_checked_float64_archive(files, capsys):
    folder, frames, model = files
    out = folder / "short.pt2"
    code = main(["export", "--model", str(folder / "short.pt"), "--out", str(out), "--data",
                 str(folder / "box.npz"), "--frame", "1", "--float64"])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["max_force_difference_ev_per_angstrom"] < 1e-10
    program, meta = load_exported(out)
    assert meta["dtype"] == "float64" and meta["signature"] == SIGNATURE and meta["example"].endswith("[1]")
    # another frame than the example one
    positions, cell = frames.positions[0], frames.cell[0]
    energy, forces = program(
        torch.tensor(positions),
        torch.tensor(frames.numbers),
        torch.tensor(cell),
        torch.ones(3, dtype=torch.bool),
    )
    ref_energy, ref_forces = reference_energy_forces(model.double(), positions, frames.numbers, cell)
    assert forces.dtype == torch.float64
    np.testing.assert_allclose(forces.numpy(), ref_forces.numpy(), rtol=0, atol=1e-10)
    assert float(energy) == pytest.approx(float(ref_energy), abs=1e-9)


def test_export_command_needs_an_example_frame(files, capsys):
    folder, _, _ = files
    code = main(["export", "--model", str(folder / "short.pt"), "--out", str(folder / "x.pt2")])
    assert code == 2
    assert "give an example frame with --data" in capsys.readouterr().err


def test_export_command_checks_the_frame_index(files, capsys):
    folder, _, _ = files
    code = main(["export", "--model", str(folder / "short.pt"), "--out", str(folder / "x.pt2"),
                 "--data", str(folder / "box.npz"), "--frame", "5"])  # fmt: skip
    assert code == 2
    assert "--frame 5 out of range" in capsys.readouterr().err
