"""The MD half of the folding benchmark (:mod:`scalepool.studies._folding_study`): folding
observables, the stability check, the amber14/GBn2 reference as an ASE calculator and the
Langevin runner shared by models and reference."""

from __future__ import annotations

import io
import time

import numpy as np
import pandas as pd

from ..data import FrameSet
from ..units import KJ_PER_MOL_NM_TO_EV_PER_ANGSTROM, KJ_PER_MOL_TO_EV, NM_TO_ANGSTROM

OBSERVABLES = ("ca_rmsd", "radius_of_gyration", "end_to_end")


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
class Topology:
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
    top: Topology,
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
