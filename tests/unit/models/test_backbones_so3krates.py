"""SO3krates (so3krates-torch) as a backbone: equal to So3krates' own forward on its own data
pipeline, and the physics suite alone, as the long branch and inside MuSE (float64, 8 atoms)."""

from __future__ import annotations

import sys

import pytest
import torch

pytest.importorskip(
    "so3krates_torch.modules.models",
    reason="SO3krates backbone needs so3krates-torch: pip install scalepool[so3krates]",
)

from backbone_suites import (  # noqa: E402
    BackboneSuite,
    LongBranchSuite,
    MuSESuite,
    assert_files_load_in_a_fresh_interpreter,
)

from scalepool.models import AtomsBatch, SO3kratesBackbone, build_branch  # noqa: E402
from scalepool.testing import TOLERANCES, random_frames  # noqa: E402

SMALL = dict(num_features=12, degrees=[1, 2], num_layers=2, num_heads=2, num_radial_basis_fn=8)


@pytest.mark.slow
class TestSO3krates(BackboneSuite):
    NAME, OPTIONS = "so3krates", SMALL


@pytest.mark.slow
class TestSO3kratesLongBranch(LongBranchSuite):
    NAME, OPTIONS = "so3krates", SMALL


@pytest.mark.slow
class TestSO3kratesMuSE(MuSESuite):
    NAME, OPTIONS = "so3krates", SMALL


def _own_batch(frames, index: int, cutoff: float) -> dict:
    """Frame ``index`` through so3krates-torch's own pipeline: ase Atoms -> Configuration ->
    AtomicData (its own neighbour list, all 118 elements) -> its torch_geometric batch."""
    import ase
    from so3krates_torch.data.atomic_data import AtomicData, get_data_loader
    from so3krates_torch.data.utils import config_from_atoms
    from so3krates_torch.tools.utils import AtomicNumberTable

    atoms = ase.Atoms(
        numbers=frames.numbers, positions=frames.positions[index], cell=frames.cell[index], pbc=True
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        item = AtomicData.from_config(
            config_from_atoms(atoms), z_table=AtomicNumberTable(list(range(1, 119))), cutoff=cutoff
        )
    finally:
        torch.set_default_dtype(previous)
    return next(iter(get_data_loader([item], batch_size=1, shuffle=False))).to_dict()


def test_energy_and_forces_equal_so3krates_own_forward_and_neighbour_list():
    """Independent reference: So3krates.forward with its own graph and autograd forces, float64."""
    frames = random_frames(n_atoms=12, box=7.5, n_frames=1, seed=5)
    model = SO3kratesBackbone(cutoff=4.5, **SMALL).double().eval()
    ours = model(AtomsBatch.from_frameset(frames, dtype=torch.float64))
    peer = model.so3krates(_own_batch(frames, 0, model.cutoff), compute_force=True)
    tol = TOLERANCES[torch.float64]
    torch.testing.assert_close(ours["energy"], peer["energy"].detach(), **tol)
    torch.testing.assert_close(ours["forces"], peer["forces"].detach(), **tol)
    assert ours["forces"].abs().max() > 1e-6  # untrained SO3krates forces are small, not zero


def test_hyperparameters_reach_so3krates_and_the_default_dtype_is_kept():
    before = torch.get_default_dtype()
    model = SO3kratesBackbone(cutoff=5.0, num_features=12, degrees=[1, 2, 3], num_layers=3, num_heads=3)
    assert torch.get_default_dtype() == before
    assert model.so3krates.r_max == 5.0 and len(model.so3krates.euclidean_transformers) == 3
    assert model.so3krates.degrees == [1, 2, 3] and model.n_features == 12 and model.n_vector_features == 1
    assert SO3kratesBackbone(num_features=12, degrees=[2, 3], num_heads=2).n_vector_features == 0
    with pytest.raises(ValueError, match="must divide num_features"):
        SO3kratesBackbone(num_features=16, degrees=[1, 2, 3])


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "so3krates_torch.modules.models", None)
    with pytest.raises(ImportError, match=r"pip install scalepool\[so3krates\]"):
        build_branch("muse", backbone="so3krates")


@pytest.mark.slow
def test_model_files_load_in_a_fresh_interpreter(tmp_path):
    assert_files_load_in_a_fresh_interpreter("so3krates", SMALL, tmp_path)
