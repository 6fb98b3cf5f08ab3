"""FrameSet validation, npz schema round trip and time-block splits."""

import json
import zipfile

import numpy as np
import pytest

from scalepool.data import DatasetError, FrameSet, time_block_split


def make_frames(n_frames=4, n_atoms=5, seed=0, **overrides):
    rng = np.random.default_rng(seed)
    fields = dict(
        positions=rng.random((n_frames, n_atoms, 3)) * 10,
        forces=rng.normal(size=(n_frames, n_atoms, 3)),
        numbers=np.array([8, 1, 1, 11, 17][:n_atoms]),
        cell=np.tile(np.diag([10.0, 11.0, 12.0]), (n_frames, 1, 1)),
        energy=rng.normal(size=n_frames),
        force_parts={"direct": rng.normal(size=(n_frames, n_atoms, 3))},
        meta={"generator": "test", "seed": seed},
    )
    fields.update(overrides)
    return FrameSet(**fields)


def test_npz_roundtrip_keeps_every_array(tmp_path):
    frames = make_frames()
    path = frames.save(tmp_path / "d.npz")
    back = FrameSet.load(path)
    np.testing.assert_array_equal(back.positions, frames.positions)
    np.testing.assert_array_equal(back.forces, frames.forces)
    np.testing.assert_array_equal(back.cell, frames.cell)
    np.testing.assert_array_equal(back.numbers, frames.numbers)
    np.testing.assert_array_equal(back.energy, frames.energy)
    np.testing.assert_array_equal(back.force_parts["direct"], frames.force_parts["direct"])
    assert back.meta == frames.meta
    assert back.checksum() == frames.checksum()


def test_npz_follows_the_schema(tmp_path):
    """Other tools read these files: names, shapes and the JSON meta are a contract."""
    path = make_frames().save(tmp_path / "d.npz")
    with np.load(path) as data:
        assert set(data.files) == {"positions", "forces", "cell", "numbers", "energy", "forces_direct", "meta"}
        assert data["positions"].shape == (4, 5, 3)
        assert data["cell"].shape == (4, 3, 3)
        assert data["numbers"].shape == (5,)
        assert json.loads(str(data["meta"]))["generator"] == "test"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"forces": None}, "forces are missing"),
        ({"forces": np.zeros((4, 5, 2))}, "forces have shape"),
        ({"positions": np.zeros((4, 5))}, "positions must have shape"),
        ({"numbers": np.array([8, 1, 1])}, "numbers must have shape"),
        ({"numbers": np.array([8.0, 1, 1, 11, 17])}, "numbers must be integers"),
        ({"numbers": np.array([8, 1, 1, 11, 0])}, "atomic numbers must lie"),
        ({"cell": np.zeros((4, 3, 3))}, "degenerate"),
        ({"cell": np.zeros((2, 3, 3))}, "cell must have shape"),
        ({"energy": np.zeros(3)}, "energy must have shape"),
        ({"force_parts": {"direct": np.zeros((4, 5, 1))}}, "force part 'direct'"),
        ({"positions": np.zeros((0, 5, 3)), "forces": np.zeros((0, 5, 3))}, "empty"),
    ],
)
def test_bad_input_is_named(overrides, message):
    with pytest.raises(DatasetError, match=message):
        make_frames(**overrides)


def test_non_finite_values_are_located():
    forces = np.zeros((4, 5, 3))
    forces[2, 3, 1] = np.nan
    with pytest.raises(DatasetError, match=r"forces contains 1 non-finite value.*\[2, 3, 1\]"):
        make_frames(forces=forces)


def test_load_rejects_empty_truncated_and_incomplete_files(tmp_path):
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(DatasetError, match="empty"):
        FrameSet.load(empty)
    good = make_frames().save(tmp_path / "good.npz")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        FrameSet.load(truncated)
    incomplete = tmp_path / "incomplete.npz"
    np.savez(incomplete, positions=np.zeros((1, 2, 3)), numbers=np.array([1, 1]))
    with pytest.raises(DatasetError, match=r"lacks required array\(s\) \['forces'\]"):
        FrameSet.load(incomplete)
    with pytest.raises(FileNotFoundError, match="not found"):
        FrameSet.load(tmp_path / "missing.npz")


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    frames = make_frames()

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", explode)
    with pytest.raises(OSError, match="disk full"):
        frames.save(tmp_path / "d.npz")
    assert list(tmp_path.iterdir()) == []


def test_saved_file_is_a_valid_zip(tmp_path):
    path = make_frames().save(tmp_path / "d.npz")
    assert zipfile.is_zipfile(path)


def test_time_block_split_is_contiguous_and_ordered():
    split = time_block_split(100, (0.8, 0.1, 0.1), gap=2)
    assert split["train"].tolist() == list(range(0, 77))
    assert split["val"][0] == 79 and split["test"][0] == split["val"][-1] + 3
    assert split["test"][-1] == 99
    joined = np.concatenate(list(split.values()))
    assert np.all(np.diff(joined) > 0)
    assert len(joined) == 100 - 4


def test_time_block_split_gives_every_block_a_frame():
    split = time_block_split(3, (0.98, 0.01, 0.01))
    assert [len(v) for v in split.values()] == [1, 1, 1]
    with pytest.raises(ValueError, match="cannot make three blocks"):
        time_block_split(4, gap=1)


def test_split_returns_framesets_in_time_order():
    frames = make_frames(n_frames=10)
    parts = frames.split((0.6, 0.2, 0.2))
    np.testing.assert_array_equal(parts["train"].positions, frames.positions[:6])
    np.testing.assert_array_equal(parts["test"].forces, frames.forces[8:])
