"""Model plumbing: edge kernels, aggregation paths, training mode, I/O, statistics, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from scalepool import testing as T
from scalepool.data import FrameSet
from scalepool.models import (
    HAS_TORCH_SCATTER,
    AtomsBatch,
    LatentChargeEwald,
    LongRangeBranch,
    PaiNN,
    SchNet,
    ShortRangeBranch,
    build_branch,
    build_model,
    fit_species_statistics,
    load_model,
    save_model,
    scatter_sum,
)
from scalepool.models import _edge_ops as ops


@pytest.fixture(scope="module")
def frames():
    return T.random_frames(n_atoms=10, box=7.5, n_frames=2, seed=11)


# --------------------------------------------------------------- edge kernels
@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(ops, "CHUNK_ELEMENTS", 16)  # many chunks, also the last partial one


@pytest.mark.parametrize(
    "kernel", ["gms_vector", "gms_scalar", "pair_dot", "outer", "dot_vector", "dot_features"]
)
def test_edge_kernels_gradients_of_first_and_second_order(kernel, small_chunks):
    n, E, F = 5, 13, 4
    i, j = torch.randint(0, n, (E,)), torch.randint(0, n, (E,))
    mk = lambda *shape: torch.randn(*shape, dtype=torch.float64, requires_grad=True)  # noqa: E731
    x3, x2, w, u = mk(n, 3, F), mk(n, F), mk(E, F), mk(E, 3)
    fn, args, ref = {
        "gms_vector": (lambda x, w: ops.gather_mul_scatter(x, w, j, i, n), (x3, w),
                       lambda x, w: torch.zeros(n, 3, F, dtype=x.dtype).index_add(0, i, x[j] * w[:, None])),
        "gms_scalar": (lambda x, w: ops.gather_mul_scatter(x, w, j, i, n), (x2, w),
                       lambda x, w: torch.zeros(n, F, dtype=x.dtype).index_add(0, i, x[j] * w)),
        "pair_dot": (lambda G, x: ops.gather_pair_dot(G, x, i, j), (x3, mk(n, 3, F)),
                     lambda G, x: (G[i] * x[j]).sum(1)),
        "outer": (lambda u, a: ops.outer_scatter(u, a, i, n), (u, w),
                  lambda u, a: torch.zeros(n, 3, F, dtype=u.dtype).index_add(0, i, u[:, :, None] * a[:, None])),
        "dot_vector": (lambda G, u: ops.gather_dot_vector(G, u, i), (x3, u),
                       lambda G, u: (G[i] * u[:, :, None]).sum(1)),
        "dot_features": (lambda G, a: ops.gather_dot_features(G, a, i), (x3, w),
                         lambda G, a: (G[i] * a[:, None]).sum(2)),
    }[kernel]  # fmt: skip
    torch.testing.assert_close(fn(*args), ref(*args), rtol=0, atol=1e-12)
    assert gradcheck(fn, args)
    assert gradgradcheck(fn, args)


def test_scatter_sum_native():
    out = scatter_sum(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 2, 0]), 4)
    assert out.tolist() == [4.0, 0.0, 2.0, 0.0]
    if not HAS_TORCH_SCATTER:
        with pytest.raises(ImportError, match="torch-scatter is not installed"):
            scatter_sum(torch.ones(2), torch.zeros(2, dtype=torch.long), 1, use_torch_scatter=True)


# ---------------------------------------------- fused kernels == plain tensor ops
@pytest.mark.parametrize("cls", [PaiNN, SchNet])
def test_fused_aggregation_equals_plain_ops_through_a_force_loss(cls, frames):
    batch = AtomsBatch.from_frameset(frames, dtype=torch.float64)
    results = []
    for aggregation in ("fused", "index_add"):
        torch.manual_seed(0)
        model = cls(cutoff=4.0, n_features=6, n_interactions=2, aggregation=aggregation).double().train()
        out = model(batch)
        loss = (out["forces"] ** 2).sum() + out["energy"].sum()
        loss.backward()  # second derivatives: the force loss differentiates the forces
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results.append((out["energy"].detach(), out["forces"].detach(), grads))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert results[0][2].abs().max() > 0


def test_training_mode_keeps_the_force_graph_and_no_grad_detaches(frames):
    batch = AtomsBatch.from_frameset(frames)
    model = build_branch("short", n_features=8, n_interactions=2).train()
    out = model(batch)
    assert out["forces"].requires_grad and out["energy"].shape == (2,)
    torch.testing.assert_close(
        out["energy"], torch.zeros(2).index_add(0, batch.frame_index, out["atomic_energies"])
    )
    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert not out["forces"].requires_grad and out["forces"].abs().max() > 0
    assert not batch.positions.requires_grad  # the caller's tensor is untouched


# ------------------------------------------------------------------ I/O, config
@pytest.mark.parametrize(
    "make",
    [
        lambda: PaiNN(cutoff=4.0, n_features=8, n_interactions=2),
        lambda: SchNet(cutoff=4.0, n_features=8, n_interactions=2),
        lambda: build_branch("short", n_features=8, n_interactions=1, backbone="schnet"),
        lambda: build_branch("long", n_features=8, n_interactions=1, fixed_charges=False, smearing=1.3),
    ],
)
def test_save_load_round_trip(make, frames, tmp_path):
    model = make().double()
    model.species_shift[8] = -3.5
    path = save_model(model, tmp_path / "sub" / "model.pt")
    assert not list(path.parent.glob("*.part"))
    loaded = load_model(path)
    assert loaded.config == json.loads(json.dumps(model.config))
    assert next(loaded.parameters()).dtype == torch.float64
    batch = AtomsBatch.from_frameset(frames, dtype=torch.float64)
    a, b = T.evaluate(model, batch), T.evaluate(loaded, batch)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    rebuilt = build_model(json.loads(json.dumps(model.config)))
    assert type(rebuilt) is type(model) and rebuilt.cutoff == model.cutoff


def test_load_model_rejects_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_model(tmp_path / "missing.pt")
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a scalepool model file"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(ValueError, match="unknown model class 'Nope'"):
        build_model({"class": "Nope"})


def test_build_branch_routes_options():
    long = build_branch("long", cutoff=5.5, n_features=8, fixed_charges=True, method="ewald")
    assert isinstance(long, LongRangeBranch) and long.cutoff == 5.5 and long.backbone.n_features == 8
    assert long.electrostatics.fixed_charges and long.config["electrostatics"]["method"] == "ewald"
    switched = build_branch("long", real_space_cutoff=8.0, switch_width=0.5)
    assert switched.electrostatics.real_space_cutoff == 8.0
    assert switched.config["electrostatics"]["switch_width"] == 0.5
    short = build_branch("short")
    assert isinstance(short, ShortRangeBranch) and short.cutoff == 4.5
    assert build_branch("long").cutoff == 6.0
    with pytest.raises(ValueError, match="no electrostatics"):
        build_branch("short", fixed_charges=True)
    with pytest.raises(ValueError, match=r"branch must be one of \['long', 'muse', 'short'\]"):
        build_branch("medium")


def test_branch_config_stores_resolved_backbone_settings():
    """A saved branch must rebuild with the same shapes even if a default changes later."""
    short = build_branch("short")
    for key in ("n_features", "n_interactions", "n_rbf", "radial_basis", "cutoff_function"):
        assert short.config[key] == short.backbone.config[key]
    rebuilt = build_model(short.config)
    assert rebuilt.config == short.config


# ------------------------------------------------------------------ statistics
def test_fit_species_statistics_recovers_shift_and_force_scale():
    numbers = np.array([8, 1, 1, 11])
    rng = np.random.default_rng(0)
    forces = rng.normal(scale=0.5, size=(4, 4, 3))
    frames = FrameSet(
        positions=rng.uniform(0, 5, size=(4, 4, 3)),
        forces=forces,
        numbers=numbers,
        energy=np.array([-10.0, -10.2, -9.8, -10.0]),
    )
    model = PaiNN(n_features=4, n_interactions=1)
    stats = fit_species_statistics(model, frames)
    counts = {8: 1, 1: 2, 11: 1}
    assert sum(counts[z] * stats["shift"][z] for z in counts) == pytest.approx(-10.0)
    rms = float(np.sqrt(np.mean(forces.astype(np.float32).astype(np.float64) ** 2)))
    assert model.species_scale[1].item() == pytest.approx(rms, rel=1e-6)
    assert model.species_scale[17].item() == pytest.approx(rms, rel=1e-6)  # absent: global value
    per = fit_species_statistics(model, frames, per_species_scale=True)
    assert per["scale"][11] == pytest.approx(float(np.sqrt(np.mean(frames.forces[:, 3] ** 2))), rel=1e-6)
    frames.energy = None
    fit_species_statistics(model, frames)
    assert model.species_shift.abs().max() == 0


# ------------------------------------------------------------------ validation
def test_forward_validates_its_input(frames):
    model = PaiNN(n_features=4, n_interactions=1)
    batch = AtomsBatch.from_frameset(frames, dtype=torch.float64)
    with pytest.raises(TypeError, match="model parameters are torch.float32 but the batch is torch.float64"):
        model(batch)
    bad = T.replace(batch.to(dtype=torch.float32), numbers=batch.numbers * 0)
    with pytest.raises(ValueError, match="atomic numbers must lie in 1..118"):
        model(bad)
    with pytest.raises(ValueError, match="cutoff must be a positive"):
        PaiNN(cutoff=0.0)
    with pytest.raises(ValueError, match="aggregation must be one of"):
        PaiNN(aggregation="magic")


# --------------------------------------------------------------- electrostatics
def test_latent_charges_are_neutral_per_frame(frames):
    head = LatentChargeEwald(n_features=5).double()
    batch = AtomsBatch.from_frameset(frames, dtype=torch.float64)
    q = head.charges(batch, torch.randn(batch.n_atoms, 5, dtype=torch.float64))
    totals = torch.zeros(2, dtype=torch.float64).index_add(0, batch.frame_index, q)
    assert totals.abs().max() < 1e-12 and q.abs().max() > 1e-4
    with pytest.raises(ValueError, match="latent charges need"):
        head.charges(batch)


def test_open_boundary_coulomb_of_two_ions():
    from scalepool.units import COULOMB_EV_ANGSTROM

    batch = AtomsBatch(
        positions=torch.tensor([[0.0, 0.0, 0.0], [2.5, 1.0, -0.5]], dtype=torch.float64),
        numbers=torch.tensor([11, 17]),
        frame_index=torch.zeros(2, dtype=torch.long),
        cell=None,
        n_frames=1,
    )
    head = LatentChargeEwald(fixed_charges=True).double()
    r = float(np.linalg.norm([2.5, 1.0, -0.5]))
    assert head(batch).sum().item() == pytest.approx(-COULOMB_EV_ANGSTROM / r, rel=1e-12)


def test_tuned_parameters_are_computed_once_per_cell_shape(frames):
    head = LatentChargeEwald(fixed_charges=True, tune=True, method="p3m").double()
    batch = AtomsBatch.from_frameset(frames, dtype=torch.float64)
    energy = head(batch).sum()
    assert len(head._tuned) == 1  # both frames share one cell
    params = next(iter(head._tuned.values()))
    assert params["smearing"] > 0 and params["mesh_spacing"] > 0
    head(batch)
    assert len(head._tuned) == 1
    exact = LatentChargeEwald(fixed_charges=True, method="ewald", smearing=1.0, lr_wavelength=0.25).double()
    reference = exact(batch).sum()
    # The tuner aims at accuracy 1e-3 (its own error estimate, force-like); on
    # this 10-atom box the energy lands about 0.1 % from exact Ewald.
    assert abs(float(energy - reference)) < 3e-3 * abs(float(reference))
