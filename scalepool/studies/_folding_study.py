"""Chignolin folding benchmark: trained models on the peptide testbed (``scalepool data peptide``).

Two parts, for every trained run (``--run``, short/long/muse, any seeds):

1. **Force errors by folding state.**  Every frame of the run's split (``split``,
   default ``test``; ``all`` for every frame) is put in one state by its stored
   C-alpha RMSD to the model hairpin (``meta["observables"]["ca_rmsd"]``, Å):
   *folded* below ``folded_below`` (default 2 Å), *unfolded* above
   ``unfolded_above`` (default 4 Å), *transition* in between (both bounds
   inclusive on the transition side).  Force MAE and RMSE (meV/Å, over force
   components) per state and overall.
2. **Langevin MD driven by each model and by the reference force field** from
   two starts: the dataset frame of lowest C-alpha RMSD (*folded*) and of
   highest (*unfolded*).  All trajectories use the same ASE ``Langevin``
   integrator (``timestep_fs``, ``temperature_k``, ``friction_per_ps``,
   Maxwell-Boltzmann velocities seeded by the study seed, no constraints);
   the reference is amber14 + GBn2 rebuilt from the dataset's ``meta`` (its
   PDB text and force-field files, as :func:`scalepool.data.peptide_reference`
   does) without the HBonds constraints, evaluated by OpenMM.  Every
   ``record_every`` steps: C-alpha RMSD to the hairpin (Å, Kabsch), C-alpha
   radius of gyration (Å), end-to-end distance (Å, first to last C-alpha) and
   stability: the largest relative bond stretch ``|r - r0| / r0`` over the
   topology's bonds (``r0`` from the start frame) and a blow-up flag (non-finite
   positions, a stretch above ``max_bond_stretch`` or an atom with no other atom
   within ``detach_distance``); a blown-up trajectory stops there.

Outputs (``provenance.json`` beside them): ``frame_errors.csv`` (per model and
frame: split, state, C-alpha RMSD, force MAE), ``state_errors.csv`` (per model,
state: MAE, RMSE, frames), ``md_samples.csv`` (per trajectory sample),
``md_summary.csv`` (per trajectory: steps done, blow-up, largest stretch, mean
observables and their 1-Wasserstein distance to the reference trajectory of the
same start and seed, over the samples before a blow-up) and ``folding.json`` (thresholds, start frames, the check of
the OpenMM reference against the stored forces).  Figures: ``scalepool.plots``
(``folding_md``, ``folding_errors``).  Budgets are in MD steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data import FrameSet, peptide_observables
from ..md import ScalepoolCalculator
from ..models import load_model
from ..provenance import ResultsDir
from ..train import predict_forces, read_run_config
from ..units import EV_TO_MEV
from ._folding_md import Topology, langevin_md, md_summary, openmm_calculator
from ._study import Option, Study

NAME = "folding"
STATES = ("folded", "transition", "unfolded")


# ------------------------------------------------------------------ states and errors
def folding_states(ca_rmsd: np.ndarray, folded_below: float = 2.0, unfolded_above: float = 4.0) -> np.ndarray:
    """State name per frame from C-alpha RMSD ``(F,)`` Å: folded (< ``folded_below``), unfolded
    (> ``unfolded_above``), transition otherwise.  Returns (F,) str."""
    if not folded_below <= unfolded_above:
        raise ValueError(f"folded_below ({folded_below}) must not exceed unfolded_above ({unfolded_above})")
    rmsd = np.asarray(ca_rmsd, dtype=np.float64)
    if not np.isfinite(rmsd).all():
        raise ValueError(
            f"C-alpha RMSD holds non-finite values at frames {np.flatnonzero(~np.isfinite(rmsd))[:6]}"
        )
    state = np.full(rmsd.shape, "transition", dtype=object)
    state[rmsd < folded_below] = "folded"
    state[rmsd > unfolded_above] = "unfolded"
    return state.astype(str)


def load_run(path: Path) -> tuple[str, int | None, torch.nn.Module, dict | None]:
    """``(branch, seed, model, config)`` of a run directory (``best.pt``) or a model file."""
    path = Path(path)
    if path.is_dir():
        config = read_run_config(path)
        seed = config.get("request", {}).get("seed")
        return (
            str(config["branch"]),
            None if seed is None else int(seed),
            load_model(path / "best.pt"),
            config,
        )
    if not path.exists():
        raise FileNotFoundError(f"run or model file not found: {path}")
    return path.stem, None, load_model(path), None


def run_labels(branches: list[str], seeds: list[int | None]) -> list[str]:
    """``branch`` or ``branch-s<seed>`` when a branch appears more than once."""
    counts = {b: branches.count(b) for b in branches}
    return [
        b if counts[b] == 1 else f"{b}-s{s if s is not None else i}"
        for i, (b, s) in enumerate(zip(branches, seeds, strict=True))
    ]


def split_frames(frames: FrameSet, config: dict | None, split: str) -> np.ndarray:
    """Frame indices of ``split`` (train/val/test/all) as the run recorded them."""
    if split == "all":
        return np.arange(frames.n_frames)
    if config is None:
        raise ValueError(
            f"split {split!r} needs a run directory (its config.json); use split 'all' for model files"
        )
    record = config["split"]
    if record.get("indices") is not None:
        return np.asarray(record["indices"][split], dtype=np.int64)
    return frames.split_indices(tuple(record["fractions"]), int(record.get("gap", 0)))[split]


def state_errors(frames: FrameSet, index: np.ndarray, forces: np.ndarray, state: np.ndarray) -> pd.DataFrame:
    """Force MAE and RMSE (meV/Å, components) per state and ``overall``.

    forces: (n, N, 3) eV/Å predicted for frames ``index``; state: (F,) of the whole dataset."""
    error = forces.astype(np.float64) - frames.forces[index]
    rows = []
    for name, mask in [*((s, state[index] == s) for s in STATES), ("overall", np.ones(len(index), bool))]:
        e = error[mask]
        rows.append({
            "state": name, "n_frames": int(mask.sum()),
            "mae_meV_A": float(np.abs(e).mean() * EV_TO_MEV) if e.size else float("nan"),
            "rmse_meV_A": float(np.sqrt((e**2).mean()) * EV_TO_MEV) if e.size else float("nan"),
        })  # fmt: skip
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ the study
def run(
    inputs,
    out,
    *,
    seeds=(0,),
    device="cpu",
    parameters=None,
    split="test",
    folded_below=2.0,
    unfolded_above=4.0,
    md_steps=2000,
    record_every=10,
    timestep_fs=0.5,
    temperature_k=300.0,
    friction_per_ps=1.0,
    max_bond_stretch=0.5,
    detach_distance=3.0,
) -> Path:
    """Compute the folding benchmark (module docstring) into ``out``; ``inputs = (data, runs)``."""
    data, paths = Path(inputs[0]), [Path(p) for p in inputs[1]]
    frames = FrameSet.load(data)
    if frames.ragged:
        raise ValueError(f"{data}: the folding study needs the fixed-composition peptide dataset")
    top = Topology(frames)
    obs = peptide_observables(frames)
    state = folding_states(obs["ca_rmsd"], folded_below, unfolded_above)
    reference_ca = np.asarray(frames.meta["reference_ca"], dtype=np.float64)
    results = ResultsDir(out, NAME, parameters or {}, seeds, [data])
    loaded = [load_run(p) for p in paths]
    labels = run_labels([b for b, *_ in loaded], [s for _, s, *_ in loaded])
    per_frame, per_state, models = [], [], {}
    for label, (branch, seed, model, config) in zip(labels, loaded, strict=True):
        index = split_frames(frames, config, split)
        dtype = next(model.parameters()).dtype
        pred = predict_forces(model, frames, index, device=device, dtype=dtype)["forces"]
        frame_mae = np.abs(pred.astype(np.float64) - frames.forces[index]).mean(axis=(1, 2)) * EV_TO_MEV
        per_frame.append(pd.DataFrame({"model": label, "branch": branch, "model_seed": seed, "frame": index,
                                       "split": split, "state": state[index], "ca_rmsd": obs["ca_rmsd"][index],
                                       "mae_meV_A": frame_mae}))  # fmt: skip
        table = state_errors(frames, index, pred, state)
        table.insert(0, "model_seed", seed)
        table.insert(0, "branch", branch)
        table.insert(0, "model", label)
        per_state.append(table)
        models[label] = model
    results.csv("frame_errors.csv", pd.concat(per_frame, ignore_index=True))
    results.csv("state_errors.csv", pd.concat(per_state, ignore_index=True))

    starts = {"folded": int(np.argmin(obs["ca_rmsd"])), "unfolded": int(np.argmax(obs["ca_rmsd"]))}
    system = top.system()
    ref_calc = openmm_calculator(system)
    ref_calc.calculate(_atoms(frames, starts["folded"]), ["energy", "forces"])
    check = float(np.abs(ref_calc.results["forces"] - frames.forces[starts["folded"]]).max())
    calculators = {
        "reference": ref_calc,
        **{k: ScalepoolCalculator(m, device=device) for k, m in models.items()},
    }
    samples, summaries = [], []
    settings = {"steps": md_steps, "record_every": record_every, "timestep_fs": timestep_fs,
                "temperature_k": temperature_k, "friction_per_ps": friction_per_ps,
                "max_bond_stretch": max_bond_stretch, "detach_distance": detach_distance}  # fmt: skip
    for seed in seeds:
        for start_name, frame in starts.items():
            for label, calc in calculators.items():
                table, summary = langevin_md(calc, frames.numbers, frames.positions[frame].astype(np.float64), top,
                                             reference_ca, seed=int(seed), **settings)  # fmt: skip
                key = {"model": label, "start": start_name, "seed": int(seed)}
                samples.append(table.assign(**key))
                summaries.append({**key, "start_frame": frame, **summary})
    samples = pd.concat(samples, ignore_index=True)
    results.csv("md_samples.csv", samples)
    results.csv("md_summary.csv", md_summary(samples, pd.DataFrame(summaries)))
    results.json("folding.json", {
        "thresholds_A": {"folded_below": folded_below, "unfolded_above": unfolded_above},
        "state_counts_all_frames": {s: int((state == s).sum()) for s in STATES},
        "start_frames": starts, "start_ca_rmsd_A": {k: float(obs["ca_rmsd"][v]) for k, v in starts.items()},
        "md": {**settings, "simulated_ps": md_steps * timestep_fs / 1000.0, "integrator": "ASE Langevin",
               "reference": "OpenMM " + " + ".join(top.files) + ", NoCutoff, no constraints"},
        "reference_check_max_abs_force_diff_eV_A": check,
        "units": {"mae": "meV/Å over force components", "observables": "Å"},
    })  # fmt: skip
    results.finish(status="done", n_runs=len(paths))
    return results.path


def _atoms(frames: FrameSet, index: int):
    from ase import Atoms

    return Atoms(numbers=frames.numbers, positions=frames.positions[index].astype(np.float64), pbc=False)


STUDY = Study(
    name=NAME,
    description="Chignolin folding benchmark: force MAE per folding state (C-alpha RMSD to the hairpin) and "
    "Langevin MD of each model and of amber14/GBn2 from the folded and the unfolded start (C-alpha RMSD, "
    "radius of gyration, end-to-end distance, bond-stretch stability).",
    run=run,
    options={
        "split": Option(
            str, "test", help="frames for the force errors", choices=("train", "val", "test", "all")
        ),
        "folded_below": Option(float, 2.0, help="C-alpha RMSD (Å) below which a frame is folded"),
        "unfolded_above": Option(float, 4.0, help="C-alpha RMSD (Å) above which a frame is unfolded"),
        "md_steps": Option(int, 2000, 200, "MD steps per trajectory (budget)"),
        "record_every": Option(int, 10, help="MD steps between samples"),
        "timestep_fs": Option(float, 0.5, help="MD time step, fs (no constraints: keep <= 0.5)"),
        "temperature_k": Option(float, 300.0, help="Langevin temperature, K"),
        "friction_per_ps": Option(float, 1.0, help="Langevin friction, 1/ps"),
        "max_bond_stretch": Option(float, 0.5, help="relative bond stretch that counts as a blow-up"),
        "detach_distance": Option(float, 3.0, help="Å; an atom with no other atom this close has left"),
    },
    inputs="runs",
)
