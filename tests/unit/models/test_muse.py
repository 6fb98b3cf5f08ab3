"""MuSE wrapper: physics properties with PaiNN and SchNet backbones, hierarchy, file round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scalepool import testing
from scalepool.models import (
    AtomsBatch,
    MuSE,
    PaiNN,
    SchNet,
    build_branch,
    build_model,
    build_muse_branch,
    fit_species_statistics,
    load_model,
    save_model,
)
from scalepool.units import CHLORINE, SODIUM


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny systems gain nothing from threads, and spinning threads stall on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _activate(model: MuSE, seed: int = 0) -> MuSE:
    """Random unpooling maps, centre weights and scores, so the hierarchy changes the energy."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("levels.") and ("unpool" in name or "species_bias" in name or "score" in name):
                param.copy_(0.3 * torch.randn(param.shape, generator=gen, dtype=param.dtype))
    return model


def _muse(backbone: str = "painn", n_levels: int = 1) -> MuSE:
    torch.manual_seed(0)
    cls = {"painn": PaiNN, "schnet": SchNet}[backbone]
    inner = cls(cutoff=3.5, n_features=8, n_interactions=2, n_rbf=8)
    model = MuSE(
        inner,
        n_levels=n_levels,
        coarse_cutoff=[6.0, 8.0][:n_levels],
        anchor_species=[None, [SODIUM, CHLORINE]][:n_levels],
        sigma=[1.0, 2.0][:n_levels],
        assign_cutoff=[3.0, 5.0][:n_levels],
        n_coarse_interactions=1,
        n_rbf=8,
    )
    return _activate(model).double()


@pytest.fixture(scope="module")
def periodic() -> AtomsBatch:
    """Two frames of 12 random O/H/Na/Cl atoms in a sheared 7 Å cell, float64."""
    return AtomsBatch.from_frameset(testing.random_frames(n_atoms=12, box=7.0, seed=1), dtype=torch.float64)


@pytest.mark.parametrize(
    "backbone, n_levels",
    [("painn", 1), ("schnet", 1), ("painn", 2)],
    ids=["painn", "schnet", "painn-2levels"],
)
def test_physics_properties(backbone, n_levels, periodic):
    model = _muse(backbone, n_levels)
    energy, _ = testing.evaluate(model, periodic)
    bare, _ = testing.evaluate(model.backbone, periodic)
    assert float((energy - bare).abs().min()) > 1e-3  # the hierarchy contributes
    testing.assert_rotation_equivariance(model, periodic)
    testing.assert_translation_invariance(model, periodic)
    testing.assert_permutation_equivariance(model, periodic)
    testing.assert_periodic_image_invariance(model, periodic)
    testing.assert_batch_consistency(model, periodic)
    testing.assert_finite_difference_forces(model, periodic, n_checks=4)
    testing.assert_cutoff_continuity(model, periodic)  # backbone cutoff
    level = model.levels[0]
    testing.assert_cutoff_continuity(model, periodic, cutoff=level.assign.cutoff, i=0, j=1)  # O seed, H point


def test_continuity_at_coarse_cutoff():
    """Two lone ions: each is its own node at its own position, so only the coarse edge joins them."""
    model = _muse("painn")
    pair = AtomsBatch(
        positions=torch.zeros((2, 3), dtype=torch.float64),
        numbers=torch.tensor([SODIUM, CHLORINE]),
        frame_index=torch.zeros(2, dtype=torch.long),
        cell=None,
        n_frames=1,
    )
    coarse = model.levels[0].coarse_cutoff
    testing.assert_cutoff_continuity(model, pair, cutoff=coarse, atol=1e-10)
    energies = []
    for distance in (coarse - 0.5, coarse + 0.5):
        pos = torch.tensor([[0.0, 0.0, 0.0], [distance, 0.0, 0.0]], dtype=torch.float64)
        energies.append(testing.evaluate(model, testing.replace(pair, positions=pos))[0])
    assert float((energies[0] - energies[1]).abs()) > 1e-6  # the coarse edge is felt inside its cutoff


def test_untrained_wrapper_is_its_backbone(periodic):
    torch.manual_seed(3)
    model = MuSE(PaiNN(cutoff=3.5, n_features=8, n_interactions=1)).double()
    e_muse, f_muse = testing.evaluate(model, periodic)
    e_bare, f_bare = testing.evaluate(model.backbone, periodic)
    torch.testing.assert_close(e_muse, e_bare)
    torch.testing.assert_close(f_muse, f_bare)


def test_species_statistics_are_the_backbones():
    model = build_muse_branch(n_features=8, n_interactions=1)
    fit_species_statistics(model, testing.random_frames(n_atoms=8, seed=2))
    assert model.species_scale.data_ptr() == model.backbone.species_scale.data_ptr()
    assert float(model.species_scale[1]) != 1.0
    model.double()  # .to() replaces buffers module by module: still one tensor
    assert model.species_shift.data_ptr() == model.backbone.species_shift.data_ptr()
    assert model.species_shift.dtype == torch.float64


def test_save_load_round_trip(tmp_path, periodic):
    model = _muse("painn", n_levels=2)
    with torch.no_grad():
        model.species_shift[[1, 8]] = torch.tensor([-0.5, 1.5], dtype=torch.float64)
    path = save_model(model, tmp_path / "muse.pt")
    loaded = load_model(path)
    assert loaded.config == model.config and json.loads(json.dumps(loaded.config)) == model.config
    assert loaded.species_shift.data_ptr() == loaded.backbone.species_shift.data_ptr()
    e0, f0 = testing.evaluate(model, periodic)
    e1, f1 = testing.evaluate(loaded, periodic)
    torch.testing.assert_close(e1, e0)
    torch.testing.assert_close(f1, f0)
    rebuilt = build_model(model.config)  # same architecture from the config alone
    assert [n for n, _ in rebuilt.named_parameters()] == [n for n, _ in model.named_parameters()]


def test_build_muse_branch_routes_overrides():
    model = build_muse_branch(
        cutoff=4.0, n_features=8, coarse_cutoff=10.0, n_levels=2, learnable_assignment=False
    )
    backbone_config = model.config["backbone"]
    assert backbone_config["class"] == "ShortRangeBranch" and backbone_config["backbone"] == "painn"
    assert backbone_config["cutoff"] == 4.0 and backbone_config["n_features"] == 8
    assert model.cutoff == 4.0 and model.config["coarse_cutoff"] == [10.0, 10.0]
    assert model.config["anchor_species"] == [None, [SODIUM, CHLORINE]]
    assert not any("log_sigma" in name for name, _ in model.named_parameters())
    schnet = build_muse_branch(backbone="schnet", n_features=8)
    assert isinstance(schnet.backbone.backbone, SchNet)
    explicit = build_muse_branch(backbone_config={"class": "PaiNN", "cutoff": 3.0, "n_features": 8})
    assert isinstance(explicit.backbone, PaiNN)
    with pytest.raises(ValueError, match="backbone_config"):
        build_muse_branch(backbone_config={"class": "PaiNN"}, n_features=8)
    with pytest.raises(ValueError, match="one entry per level"):
        MuSE(PaiNN(n_features=8), n_levels=2, sigma=[1.0])


def test_assignments_report_every_level(periodic):
    model = _muse("painn", n_levels=2)
    first, second = model.assignments(periodic)
    assert first.n_points == periodic.n_atoms and second.n_points == first.n_nodes
    ions = torch.isin(periodic.numbers, torch.tensor([SODIUM, CHLORINE]))
    assert second.n_nodes == int(ions.sum())


def test_trains_and_lands_in_the_prediction_cache(tmp_path):
    """``muse`` trains like any branch and predicts into ``forces_muse`` beside ``forces_short``."""
    from scalepool.train import predict_cache, train

    frames = testing.random_frames(n_atoms=12, box=7.0, n_frames=10, seed=3)
    data = frames.save(tmp_path / "data.npz")
    small = dict(cutoff=3.0, n_features=8, n_interactions=1, n_rbf=8)
    torch.manual_seed(0)
    models = {
        "short": build_branch("short", **small),
        "muse": build_muse_branch(**small, coarse_cutoff=5.0, n_coarse_interactions=1, coarse_n_rbf=8),
    }
    runs = []
    for name, model in models.items():
        train(model, frames, tmp_path / name, epochs=1, branch=name, data_path=data, progress=False)
        runs.append(tmp_path / name)
    assert load_model(tmp_path / "muse" / "best.pt").config == models["muse"].config
    path = predict_cache(runs, frames, tmp_path / "pred.npz", data_path=data, progress=False)
    with np.load(path, allow_pickle=False) as cache:
        meta = json.loads(str(cache["meta"]))
        assert cache["forces_muse"].shape == cache["forces_short"].shape == (10, 12, 3)
        assert np.isfinite(cache["forces_muse"]).all()
    assert meta["anchors"] == {"0": "short", "1": "muse"}
