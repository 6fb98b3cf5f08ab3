"""MACE (mace-torch) as a backbone: equal to MACE's own forward on MACE's own data pipeline,
and the physics suite alone, as the long branch and inside MuSE (float64, 8 atoms)."""

from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip("mace.modules", reason="MACE backbone needs mace-torch: pip install scalepool[mace]")

from backbone_suites import (  # noqa: E402
    BackboneSuite,
    LongBranchSuite,
    MuSESuite,
    assert_files_load_in_a_fresh_interpreter,
    small_batch,
)

from scalepool.models import AtomsBatch, MACEBackbone, build_branch  # noqa: E402
from scalepool.testing import TOLERANCES, random_frames  # noqa: E402

SMALL = dict(num_channels=8, max_L=1, correlation=2, num_interactions=2, radial_mlp=[16], mlp_irreps="8x0e")


@pytest.mark.slow
class TestMACE(BackboneSuite):
    NAME, OPTIONS = "mace", SMALL


@pytest.mark.slow
class TestMACELongBranch(LongBranchSuite):
    NAME, OPTIONS = "mace", SMALL


@pytest.mark.slow
class TestMACEMuSE(MuSESuite):
    NAME, OPTIONS = "mace", SMALL


def _mace_own_batch(frames, index: int, model: MACEBackbone) -> dict:
    """Frame ``index`` through MACE's own pipeline: ase Atoms -> Configuration -> AtomicData
    (MACE's own neighbour list) -> its torch_geometric batch."""
    import ase
    from mace import data as mace_data
    from mace import tools
    from mace.tools import torch_geometric

    atoms = ase.Atoms(
        numbers=frames.numbers, positions=frames.positions[index], cell=frames.cell[index], pbc=True
    )
    table = tools.AtomicNumberTable(model.config["species"])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # AtomicData takes the default dtype
    try:
        item = mace_data.AtomicData.from_config(
            mace_data.config_from_atoms(atoms), z_table=table, cutoff=model.cutoff
        )
    finally:
        torch.set_default_dtype(previous)
    loader = torch_geometric.dataloader.DataLoader([item], batch_size=1)
    return next(iter(loader)).to_dict()


def test_energy_and_forces_equal_mace_own_forward_and_neighbour_list():
    """Independent reference: MACE's forward with its own graph (not our neighbour list,
    not our edge vectors, its own autograd forces) on a periodic frame, float64."""
    frames = random_frames(n_atoms=12, box=7.5, n_frames=1, seed=5)
    model = MACEBackbone(cutoff=4.5, **SMALL).double().eval()
    ours = model(AtomsBatch.from_frameset(frames, dtype=torch.float64))
    peer = model.mace(_mace_own_batch(frames, 0, model), compute_force=True)
    tol = TOLERANCES[torch.float64]
    torch.testing.assert_close(ours["energy"], peer["energy"].detach(), **tol)
    torch.testing.assert_close(ours["forces"], peer["forces"].detach(), **tol)
    assert ours["forces"].abs().max() > 1e-4


@pytest.mark.slow
def test_hyperparameters_reach_mace_and_the_config():
    model = MACEBackbone(cutoff=5.0, num_channels=4, max_L=2, correlation=[2, 1, 1], num_interactions=3)
    assert str(model.mace.products[0].linear.irreps_out) == "4x0e+4x1o+4x2e"
    assert len(model.mace.interactions) == 3 and float(model.mace.r_max) == 5.0
    assert model.n_features == 12 and model.n_vector_features == 4
    assert model.config["hidden_irreps"] == "4x0e+4x1o+4x2e" and model.config["correlation"] == [2, 1, 1]
    one = MACEBackbone(num_channels=4, num_interactions=1, correlation=1)
    assert one.n_vector_features == 0 and one.embed(small_batch(1).to(dtype=torch.float32)).vector is None


def test_unknown_species_is_a_clear_error():
    model = MACEBackbone(species=[1, 8], **SMALL).double()
    with pytest.raises(ValueError, match=r"built for species \[1, 8\].*\[11, 17\]"):
        model(small_batch(1))


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mace.modules", None)
    with pytest.raises(ImportError, match=r"pip install scalepool\[mace\]"):
        build_branch("short", backbone="mace")


@pytest.mark.slow
def test_model_files_load_in_a_fresh_interpreter(tmp_path):
    assert_files_load_in_a_fresh_interpreter("mace", SMALL, tmp_path)
