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

import io
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data import FrameSet, peptide_observables
from ..md import ScalepoolCalculator
from ..models import load_model
from ..provenance import ResultsDir
from ..train import predict_forces, read_run_config
from ..units import EV_TO_MEV, KJ_PER_MOL_NM_TO_EV_PER_ANGSTROM, KJ_PER_MOL_TO_EV, NM_TO_ANGSTROM
from ._study import Option, Study

NAME = "folding"
STATES = ("folded", "transition", "unfolded")
OBSERVABLES = ("ca_rmsd", "radius_of_gyration", "end_to_end")


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


# ------------------------------------------------------------------ observables and stability
def kabsch_rmsd(x: np.ndarray, ref: np.ndarray) -> float:
    """RMSD (Å) of (n, 3) ``x`` to (n, 3) ``ref`` after optimal rotation and translation."""
    a, b = x - x.mean(axis=0), ref - ref.mean(axis=0)
    u, s, vt = np.linalg.svd(a.T @ b)
    s[-1] *= np.sign(np.linalg.det(u @ vt))
    return float(np.sqrt(max((np.sum(a * a) + np.sum(b * b) - 2.0 * s.sum()) / len(x), 0.0)))


def observables(positions: np.ndarray, ca: np.ndarray, reference_ca: np.ndarray) -> dict[str, float]:
    """C-alpha RMSD to ``reference_ca`` (n_ca, 3) Å, C-alpha radius of gyration (Å, unweighted) and
    end-to-end distance (Å, first to last C-alpha) of ``positions`` (N, 3) Å; ``ca`` (n_ca,) indices."""
    x = positions[ca]
    return {
        "ca_rmsd": kabsch_rmsd(x, reference_ca),
        "radius_of_gyration": float(np.sqrt(((x - x.mean(axis=0)) ** 2).sum(axis=1).mean())),
        "end_to_end": float(np.linalg.norm(x[-1] - x[0])),
    }


def stability(
    positions: np.ndarray,
    bonds: np.ndarray,
    r0: np.ndarray,
    max_bond_stretch: float = 0.5,
    detach_distance: float = 3.0,
) -> dict:
    """Stability of one configuration ``positions`` (N, 3) Å: ``max_bond_stretch`` (largest
    ``|r - r0| / r0`` over ``bonds`` (B, 2) with lengths ``r0`` (B,) Å), ``isolated_atoms`` (atoms
    without another atom within ``detach_distance`` Å), ``blown_up`` and its ``reason``."""
    positions = np.asarray(positions, dtype=np.float64)
    if not np.isfinite(positions).all():
        return {
            "max_bond_stretch": float("nan"),
            "isolated_atoms": -1,
            "blown_up": True,
            "reason": "non-finite",
        }
    r = np.linalg.norm(positions[bonds[:, 0]] - positions[bonds[:, 1]], axis=1)
    stretch = float(np.max(np.abs(r - r0) / r0)) if len(bonds) else 0.0
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    isolated = int((d.min(axis=1) > detach_distance).sum())
    reason = "bond stretch" if stretch > max_bond_stretch else "atom left" if isolated else ""
    return {
        "max_bond_stretch": stretch,
        "isolated_atoms": isolated,
        "blown_up": bool(reason),
        "reason": reason,
    }


# ------------------------------------------------------------------ reference force field
class _Topology:
    """Topology pieces of a peptide dataset from ``meta["pdb"]``: C-alpha indices, bonds, OpenMM system."""

    def __init__(self, frames: FrameSet):
        import openmm.app as app

        meta = frames.meta
        if "pdb" not in meta or "force_field_files" not in meta:
            raise ValueError(
                "not a peptide dataset: meta lacks 'pdb' or 'force_field_files' (scalepool data peptide?)"
            )
        if frames.cell is not None or meta.get("parameters", {}).get("solvent", "implicit") != "implicit":
            raise ValueError(
                "the folding study needs the implicit-solvent (GBn2, open boundaries) peptide dataset"
            )
        self.topology = app.PDBFile(io.StringIO(meta["pdb"])).topology
        atoms = list(self.topology.atoms())
        if len(atoms) != frames.n_atoms:
            raise ValueError(f"meta['pdb'] has {len(atoms)} atoms, the frames {frames.n_atoms}")
        self.ca = np.array([a.index for a in atoms if a.name == "CA"])
        self.bonds = np.array([[b[0].index, b[1].index] for b in self.topology.bonds()], dtype=np.int64)
        self.files = list(meta["force_field_files"])

    def system(self):
        """amber14 + GBn2 as stored in ``meta``, NoCutoff, without constraints (for unconstrained MD)."""
        import openmm.app as app

        return app.ForceField(*self.files).createSystem(
            self.topology, nonbondedMethod=app.NoCutoff, constraints=None
        )


def openmm_calculator(system, threads: int = 1):
    """An ASE calculator (energy eV, forces eV/Å) over one persistent OpenMM CPU context of ``system``."""
    import openmm
    import openmm.unit as unit
    from ase.calculators.calculator import Calculator, all_changes

    platform = openmm.Platform.getPlatformByName("CPU")
    context = openmm.Context(system, openmm.VerletIntegrator(1e-3), platform, {"Threads": str(threads)})

    class OpenMMCalculator(Calculator):
        implemented_properties = ["energy", "free_energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            context.setPositions(self.atoms.get_positions() / NM_TO_ANGSTROM)
            state = context.getState(getEnergy=True, getForces=True)
            energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) * KJ_PER_MOL_TO_EV
            forces = np.asarray(
                state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
            )
            self.results = {
                "energy": energy,
                "free_energy": energy,
                "forces": forces * KJ_PER_MOL_NM_TO_EV_PER_ANGSTROM,
            }

    return OpenMMCalculator()


# ------------------------------------------------------------------ MD
def langevin_md(
    calculator,
    numbers: np.ndarray,
    start: np.ndarray,
    top: _Topology,
    reference_ca: np.ndarray,
    *,
    steps: int,
    record_every: int,
    timestep_fs: float,
    temperature_k: float,
    friction_per_ps: float,
    seed: int,
    max_bond_stretch: float,
    detach_distance: float,
) -> tuple[pd.DataFrame, dict]:
    """ASE Langevin MD from ``start`` (N, 3) Å; samples every ``record_every`` steps (step 0 included)
    and a summary (steps done, blow-up and reason, largest bond stretch, wall seconds)."""
    from ase import Atoms, units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

    atoms = Atoms(numbers=numbers, positions=start, pbc=False)
    atoms.calc = calculator
    atoms.set_constraint(FixCom())  # the centre of mass stays put (ASE's advice over Langevin's fixcm)
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_k, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    dyn = Langevin(atoms, timestep=timestep_fs * units.fs, temperature_K=temperature_k,
                   friction=friction_per_ps / (1000.0 * units.fs), fixcm=False, rng=rng)  # fmt: skip
    r0 = np.linalg.norm(start[top.bonds[:, 0]] - start[top.bonds[:, 1]], axis=1)
    rows, step, reason, worst, t0 = [], 0, "", 0.0, time.perf_counter()
    while True:
        pos = atoms.get_positions()
        check = stability(pos, top.bonds, r0, max_bond_stretch, detach_distance)
        obs = (
            observables(pos, top.ca, reference_ca)
            if np.isfinite(pos).all()
            else dict.fromkeys(OBSERVABLES, np.nan)
        )
        rows.append({"step": step, "time_ps": step * timestep_fs / 1000.0, **obs,
                     "max_bond_stretch": check["max_bond_stretch"]})  # fmt: skip
        worst = max(worst, check["max_bond_stretch"]) if np.isfinite(check["max_bond_stretch"]) else worst
        if check["blown_up"] or step >= steps:
            reason = check["reason"]
            break
        n = min(record_every, steps - step)
        try:
            dyn.run(n)
        except (ValueError, RuntimeError, FloatingPointError) as err:  # e.g. non-finite model output
            reason = f"error: {type(err).__name__}"
            break
        step += n
    summary = {"steps_done": step, "blown_up": bool(reason), "reason": reason, "max_bond_stretch": worst,
               "wall_s": time.perf_counter() - t0}  # fmt: skip
    return pd.DataFrame(rows), summary


def wasserstein(a: np.ndarray, b: np.ndarray) -> float:
    """1-Wasserstein distance of two samples (same unit as the samples); NaN when one is empty."""
    from scipy.stats import wasserstein_distance

    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    return float(wasserstein_distance(a, b)) if len(a) and len(b) else float("nan")


def md_summary(samples: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per trajectory (model, start, seed): mean observables and their 1-Wasserstein distance (Å)
    to the reference trajectory of the same start and seed, beside the stability summary ``runs``."""
    rows = []
    for (model, start, seed), group in samples.groupby(["model", "start", "seed"], sort=False):
        ref = samples[(samples.model == "reference") & (samples.start == start) & (samples.seed == seed)]
        row = {"model": model, "start": start, "seed": seed}
        for name in OBSERVABLES:
            row[f"{name}_mean"] = float(group[name].mean())
            row[f"{name}_w1"] = wasserstein(group[name], ref[name]) if len(ref) else float("nan")
        rows.append(row)
    return runs.merge(pd.DataFrame(rows), on=["model", "start", "seed"])


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
    top = _Topology(frames)
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
