"""Mixed precision (``precision="bf16-mixed"``): what stays float32, how close bf16 forces are, training.

Tolerance of bf16-mixed forces.  bfloat16 keeps 8 significant bits (7 stored +
the implicit one): one rounding has relative error at most u = 2^-8 = 3.9e-3.
Under autocast on the CPU only the linear layers run in bf16; their inputs and
outputs are rounded, about 2 roundings per linear layer and ~10 linear layers
on the path from a distance to an atom's energy and back (forward and force
backward) in these models.  Independent roundings add in quadrature: the
expected relative RMS force error is about sqrt(20) u = 4.5 u.  We require the
RMS error relative to the RMS force to be below 8 u = 2^-5 = 0.031 (less than
twice that estimate) and, so that the test can tell mixed from full
precision, above 0.1 u (float32 errors are ~1e-6 relative: 3 orders lower).
The float32 run must meet the shared float32 tolerance against float64.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from standins import make_frames

from scalepool.models import AtomsBatch, build_branch, fit_species_statistics
from scalepool.testing import TOLERANCES, water_box
from scalepool.train import CONFIG, TrainError, autocast, check_precision, predict_forces, train

BF16_UNIT_ROUNDOFF = 2.0**-8  # bfloat16: 8 significant bits
FORCE_REL_RMS_TOL = 8 * BF16_UNIT_ROUNDOFF  # see the module docstring
SMALL = {"n_features": 16, "n_interactions": 2, "n_rbf": 8}


@pytest.fixture(scope="module")
def water():
    """~100 atoms of water with 2 ion pairs in a 10 Å periodic box; forces and energy (below) labels."""
    return water_box(10.0, n_ion_pairs=2, seed=1)


def _branch(name: str, frames):
    torch.manual_seed(0)
    model = build_branch(name, **SMALL)
    fit_species_statistics(model, _labelled(frames))
    return model.eval()


def _labelled(frames):
    """water_box frames with unit random forces and an energy, so species statistics are fitted
    (non-trivial per-species shifts of several eV: the per-frame sum then needs float32 accumulation)."""
    rng = np.random.default_rng(0)
    out = frames[[0]]
    out.forces[:] = rng.normal(size=out.forces.shape)
    n = {z: int((out.numbers == z).sum()) for z in np.unique(out.numbers)}
    out.energy = np.array([sum(-3.0 * z * count for z, count in n.items())], dtype=np.float64)
    return out


def _forward(model, frames, dtype, precision):
    model = model.to(dtype)
    batch = AtomsBatch.from_frameset(frames, [0], "cpu", dtype)
    with autocast(precision, "cpu"):
        return model(batch)


@pytest.mark.parametrize("name", ["short", "long", "muse"])
def test_bf16_mixed_forces_agree_with_float32_and_energies_are_float32_sums(name, water):
    model = _branch(name, water)
    ref = _forward(model, water, torch.float64, "float32")
    full = _forward(model, water, torch.float32, "float32")
    mixed = _forward(model, water, torch.float32, "bf16-mixed")
    f64 = ref["forces"].detach()
    scale = f64.square().mean().sqrt()
    assert scale > 0.01  # forces of a fitted model, not zeros
    # float32 meets the shared float32 tolerance against float64
    torch.testing.assert_close(full["forces"].double(), f64, **TOLERANCES[torch.float32])
    rel = ((mixed["forces"].double() - f64).square().mean().sqrt() / scale).item()
    print(f"{name}: bf16-mixed relative RMS force error {rel:.2e} ({rel / BF16_UNIT_ROUNDOFF:.2f} u)")
    assert 0.1 * BF16_UNIT_ROUNDOFF < rel < FORCE_REL_RMS_TOL, rel
    # energies and forces come back float32; the frame energy is the float64 sum of the
    # float32 per-atom energies up to one float32 rounding per addition (not a bf16 sum)
    for key in ("energy", "atomic_energies", "forces"):
        assert mixed[key].dtype == torch.float32, key
    atomic = mixed["atomic_energies"].detach()
    exact = atomic.double().sum()
    bound = atomic.numel() * torch.finfo(torch.float32).eps * atomic.double().abs().sum()
    assert abs(mixed["energy"].double().item() - exact.item()) <= bound.item()
    assert abs(exact.item()) > 10.0  # shifts make the sum large: a bf16 sum would be off by > 0.04 eV
    # the mixed frame energy is close to float64: relative error within the bf16 force tolerance
    e64 = ref["energy"].item()
    assert abs(mixed["energy"].item() - e64) <= FORCE_REL_RMS_TOL * ref["atomic_energies"].abs().sum().item()


def test_long_branch_electrostatics_run_without_autocast(water):
    model = _branch("long", water)
    seen = []

    def hook(module, inputs, output):
        seen.append((torch.is_autocast_enabled("cpu"), inputs[1].dtype, output.dtype))

    handle = model.electrostatics.register_forward_hook(hook)
    try:
        _forward(model, water, torch.float32, "bf16-mixed")
    finally:
        handle.remove()
    assert seen == [(False, torch.float32, torch.float32)]


@pytest.mark.slow  # ~20 s: three short training runs
def test_float32_never_enters_autocast_and_is_bitwise_the_default(tmp_path, monkeypatch):
    frames = make_frames(n_frames=6, n_atoms=12)
    options = dict(epochs=1, batch_size=2, lr=5e-3, split_fractions=(0.5, 0.25, 0.25), seed=1, progress=False)

    def weights(out, **extra):
        torch.manual_seed(0)
        model = build_branch("short", cutoff=3.0, **SMALL)
        train(model, frames, out, **options, **extra)
        return {k: v.clone() for k, v in model.state_dict().items()}

    default = weights(tmp_path / "default")
    entered = []
    original = torch.autocast.__enter__
    monkeypatch.setattr(torch.autocast, "__enter__", lambda self: entered.append(self) or original(self))
    explicit = weights(tmp_path / "float32", precision="float32")
    assert entered == []
    mixed = weights(tmp_path / "bf16", precision="bf16-mixed")
    assert entered  # the patch sees autocast when it is used
    assert default.keys() == explicit.keys()
    for key in default:
        assert torch.equal(default[key], explicit[key]), key
    assert any(not torch.equal(default[k], mixed[k]) for k in default if default[k].is_floating_point())
    # the float32 request is that of runs from before mixed precision; bf16 is recorded
    assert "precision" not in json.loads((tmp_path / "float32" / CONFIG).read_text())["request"]
    assert json.loads((tmp_path / "bf16" / CONFIG).read_text())["request"]["precision"] == "bf16-mixed"


def test_bf16_mixed_training_steps_are_finite_and_weights_stay_float32(tmp_path):
    frames = make_frames(n_frames=6, n_atoms=12)
    torch.manual_seed(0)
    model = build_branch("long", cutoff=3.5, **SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(
        model, frames, tmp_path / "run", epochs=1, batch_size=2, lr=5e-3, split_fractions=(4 / 6, 1 / 6, 1 / 6),
        seed=1, progress=False, precision="bf16-mixed",
    )  # fmt: skip
    assert result.steps == 2 and result.stop_reason == "completed"
    assert np.isfinite(result.history["train_loss"]).all() and np.isfinite(result.best_val_force_mae)
    state = model.state_dict()
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert any(not torch.equal(before[k], state[k]) for k in state if state[k].is_floating_point())
    pred = predict_forces(model, frames, [5], precision="bf16-mixed")
    assert pred["forces"].dtype == np.float32 and np.isfinite(pred["forces"]).all()


def test_fp16_mixed_is_refused_on_cpu(tmp_path):
    frames = make_frames(n_frames=4, n_atoms=8)
    model = build_branch("short", cutoff=3.0, **SMALL)
    with pytest.raises(TrainError, match="'fp16-mixed' needs a CUDA device.*got device 'cpu'"):
        train(model, frames, tmp_path / "run", epochs=1, progress=False, precision="fp16-mixed")
    assert not (tmp_path / "run").exists()
    with pytest.raises(TrainError, match="needs a CUDA device"):
        predict_forces(model, frames, [0], precision="fp16-mixed")
    with pytest.raises(TrainError, match="precision must be one of"):
        check_precision("bf16", "cpu")
    with pytest.raises(TrainError, match="use --dtype float32"):
        train(model, frames, tmp_path / "run64", epochs=1, progress=False, dtype="float64", precision="bf16-mixed")


@pytest.mark.slow  # ~20 s: a training run, a prediction cache and an evaluation through the CLI
def test_cli_train_predict_evaluate_take_precision(tmp_path, capsys):
    from scalepool.cli import main

    frames = make_frames(n_frames=6, n_atoms=12)
    data = tmp_path / "d.npz"
    frames.save(data)
    common = ["--data", str(data), "--no-progress"]
    train_args = ["train", "--branch", "short", "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "2",
                  "--split", "0.5,0.25,0.25", "--model-option", "n_features=8", "--model-option", "n_interactions=1"]
    assert main([*train_args, *common, "--precision", "fp16-mixed"]) != 0
    assert "precision 'fp16-mixed' needs a CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    assert main([*train_args, *common, "--precision", "bf16-mixed"]) == 0
    config = json.loads((tmp_path / "run" / CONFIG).read_text())
    assert config["request"]["precision"] == "bf16-mixed"
    cache = tmp_path / "pred.npz"
    assert main(["predict", "--run", str(tmp_path / "run"), "--out", str(cache), *common,
                 "--precision", "bf16-mixed"]) == 0  # fmt: skip
    with np.load(cache) as saved:
        assert json.loads(str(saved["meta"]))["precision"] == "bf16-mixed"
        assert np.isfinite(saved["forces_short"]).all()
    report = tmp_path / "eval.json"
    assert main(["evaluate", "--run", str(tmp_path / "run"), "--data", str(data), "--json", str(report),
                 "--precision", "bf16-mixed"]) == 0  # fmt: skip
    assert json.loads(report.read_text())["precision"] == "bf16-mixed"
