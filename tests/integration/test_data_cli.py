"""`scalepool data info` and `data convert` end to end on a small dataset."""

import json

import numpy as np

from scalepool.cli import main
from scalepool.data import FrameSet


def small_dataset(tmp_path):
    rng = np.random.default_rng(1)
    numbers = np.array([8, 1, 1, 11, 17, 11, 17])
    positions = rng.random((3, 7, 3)) * 12
    frames = FrameSet(
        positions=positions,
        forces=rng.normal(size=(3, 7, 3)),
        numbers=numbers,
        cell=np.diag([12.0, 12.0, 12.0]),
        force_parts={"direct": np.ones((3, 7, 3)), "reciprocal": np.zeros((3, 7, 3))},
    )
    return frames, frames.save(tmp_path / "small.npz")


def test_info_reports_counts_statistics_and_close_contacts(tmp_path, capsys):
    frames, path = small_dataset(tmp_path)
    assert main(["data", "info", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_frames"] == 3 and summary["n_atoms"] == 7
    assert summary["species"] == {"H": 2, "O": 1, "Na": 2, "Cl": 2}
    rms_all = float(np.sqrt(np.mean(frames.forces.astype(float) ** 2))) * 1e3
    assert abs(summary["force_rms_meV_A"]["all"]["rms_total"] - rms_all) < 1e-3
    assert summary["force_rms_meV_A"]["Na"]["rms_direct"] == 1000.0
    # parts (1 + 0) differ from the random total: the summary must say so
    assert summary["max_abs_parts_minus_total_eV_A"] > 0.5
    assert 0.0 <= summary["close_contact_fraction_atoms"] <= 1.0


def test_convert_npz_to_extxyz_and_back(tmp_path, capsys):
    frames, path = small_dataset(tmp_path)
    xyz = tmp_path / "small.extxyz"
    assert main(["data", "convert", str(path), str(xyz)]) == 0
    back = tmp_path / "back.npz"
    assert main(["data", "convert", str(xyz), str(back)]) == 0
    again = FrameSet.load(back)
    np.testing.assert_allclose(again.positions, frames.positions, atol=1e-7)
    np.testing.assert_allclose(again.forces, frames.forces, atol=1e-6)
    np.testing.assert_allclose(again.cell, frames.cell)


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    assert main(["data", "info", str(bad)]) == 2
    assert "not a readable .npz" in capsys.readouterr().err
