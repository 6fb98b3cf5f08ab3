"""Chignolin (GYDPETGTWG) folding trajectories with OpenMM's amber14 force field.

The MuSE paper's biomolecule testbed.  The peptide is built from its sequence
with PeptideBuilder (Biopython PDB), protonated with
``openmm.app.Modeller.addHydrogens`` (pH 7: charged termini, Asp and Glu
deprotonated; 138 atoms) and simulated with ``amber14-all.xml`` plus GBn2
implicit solvent (``implicit/gbn2.xml``, no cutoff, open boundaries, cell
``None``) by default, or solvated in TIP3P with PME (``solvent="explicit"``,
periodic cell).

Sampling: segments
------------------
The frames come from independent Langevin segments (``SEGMENTS``), each
minimised, equilibrated for ``equilibration_ps`` and then sampled every
``stride_ps``; frames are split evenly over the segments (the first ones get
the remainder).  The default visits both basins:

=============  ==========  =============================================
start          T (K)       purpose
=============  ==========  =============================================
``hairpin``    300         folded basin (near the hairpin reference)
``hairpin``    450         unfolding: hot start from the folded state
``extended``   300         unfolded basin (fully extended chain)
=============  ==========  =============================================

The *hairpin* is a model: beta-strand dihedrals for Gly1-Asp3 and Thr8-Gly10
and a turn at Pro4-Gly7 (:data:`HAIRPIN_DIHEDRALS`), built by PeptideBuilder
and energy-minimised; it is **not** the NMR structure 1UAO (no structure files
are downloaded), so "folded" means "near this model hairpin".  The folding
coordinates are measured against it: Kabsch-aligned C-alpha RMSD (Å), the
fraction of native C-alpha contacts (pairs ``|i - j| >= 3`` closer than 8 Å
in the reference; smooth count ``1 / (1 + exp(5 (r - 1.5 r0)))``, Best-Hummer-
Eaton form) and the C-alpha radius of gyration (Å).  They are stored per frame
in ``meta["observables"]`` (lists; :func:`peptide_observables` returns arrays),
with the temperature and the segment of every frame.

Force groups (``forces_<part>``)
--------------------------------
implicit: ``bonded`` (bonds, angles, torsions, CMAP), ``nonbonded`` (Coulomb
and Lennard-Jones including 1-4 pairs), ``solvation`` (GBn2).  explicit:
``bonded``, ``direct`` (PME real space + LJ), ``reciprocal`` (PME
reciprocal).  Bonds to hydrogen are constrained (2 fs steps); as for the NaCl
testbed the stored forces are the force-field forces without constraint forces.

Reproducing a frame
-------------------
``meta`` holds the PDB text of the simulated topology (``pdb``), the force
field files and the ``createSystem`` options: :func:`peptide_reference` rebuilds
the system from them and recomputes energy, forces and parts of any frame.
Checkpoints: one :class:`NaclCheckpoint` folder per segment (bitwise resume
with one thread, as for NaCl).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

from ..units import NM_TO_ANGSTROM
from . import _keys as K
from . import _openmm as omm
from ._frameset import FrameSet
from ._nacl import _seeded_python_random
from ._nacl_checkpoint import NaclCheckpoint, sample_frames
from ._peptide_observables import folding_observables, peptide_observables

GENERATOR = "scalepool.data.peptide"
CHIGNOLIN = "GYDPETGTWG"
FORCE_FIELDS = {
    "implicit": ("amber14-all.xml", "implicit/gbn2.xml"),
    "explicit": ("amber14-all.xml", "amber14/tip3p.xml"),
}
PART_GROUPS = {
    "implicit": {"bonded": 0, "nonbonded": 1, "solvation": 2},
    "explicit": {"bonded": 0, "direct": 1, "reciprocal": 2},
}
#: ``(start, temperature K)`` of the default segments (module docstring).
SEGMENTS = (("hairpin", 300.0), ("hairpin", 450.0), ("extended", 300.0))
#: Backbone (phi, psi) in degrees of the model hairpin, residue by residue.
_BETA = (-120.0, 130.0)
#: Strands Gly1-Asp3 and Thr8-Gly10, turn Pro4-Gly7; chosen (Nelder-Mead on the built
#: geometry) for cross-strand C-alpha distances 1-10, 2-9, 3-8 of 5.0, 6.5, 6.1 Å and no
#: heavy-atom pair of residues two or more apart closer than 3 Å.
HAIRPIN_DIHEDRALS = (
    _BETA, _BETA, (-126.0, 155.0), (-65.0, -30.0), (-60.0, 142.0), (-82.0, 0.0), (-97.0, 0.0), _BETA, _BETA, _BETA
)  # fmt: skip
#: Minimiser iterations (tolerance 10 kJ/mol/nm) that turn the built hairpin into the reference.
REFERENCE_MINIMIZE_ITERATIONS = 500
RUN_OPTIONS = ("progress", "checkpoint", "checkpoint_every", "restart", "out")

__all__ = ["build_peptide", "generate_peptide", "peptide_observables", "peptide_reference"]


# ------------------------------------------------------------------ structures
def _peptide_pdb(sequence: str, dihedrals) -> str:
    """PDB text of ``sequence`` built by PeptideBuilder; ``dihedrals``: (phi, psi) per residue or None."""
    import PeptideBuilder
    from Bio.PDB import PDBIO

    if dihedrals is None:
        structure = PeptideBuilder.make_extended_structure(sequence)
    else:
        phi = [float(a[0]) for a in dihedrals[1:]]
        psi_im1 = [float(a[1]) for a in dihedrals[:-1]]
        structure = PeptideBuilder.make_structure(sequence, phi, psi_im1)
    PeptideBuilder.add_terminal_OXT(structure)
    buffer = io.StringIO()
    writer = PDBIO()
    writer.set_structure(structure)
    writer.save(buffer)
    return buffer.getvalue()


def build_peptide(
    sequence: str = CHIGNOLIN,
    start: str = "extended",
    solvent: str = "implicit",
    padding_nm: float = 1.0,
    seed: int = 0,
) -> tuple[app.Topology, np.ndarray, np.ndarray | None]:
    """The protonated peptide (and TIP3P water for ``solvent="explicit"``).

    ``start``: "extended" or "hairpin" (:data:`HAIRPIN_DIHEDRALS`, needs 10 residues);
    ``seed`` seeds Python's random for the hydrogen and counter-ion placement of ``Modeller``;
    ``padding_nm`` matters for explicit solvent only.
    Returns ``(topology, positions (N, 3) Å, cell (3, 3) Å rows or None)``.
    """
    if start not in ("extended", "hairpin"):
        raise ValueError(f"start must be 'extended' or 'hairpin', got {start!r}")
    if solvent not in FORCE_FIELDS:
        raise ValueError(f"solvent must be one of {sorted(FORCE_FIELDS)}, got {solvent!r}")
    if start == "hairpin" and len(sequence) != len(HAIRPIN_DIHEDRALS):
        raise ValueError(f"the hairpin start needs {len(HAIRPIN_DIHEDRALS)} residues, got {len(sequence)}")
    pdb = app.PDBFile(io.StringIO(_peptide_pdb(sequence, HAIRPIN_DIHEDRALS if start == "hairpin" else None)))
    forcefield = app.ForceField(*FORCE_FIELDS[solvent])
    modeller = app.Modeller(pdb.topology, pdb.positions)
    # Modeller places new hydrogens with Python's random and relaxes them; seeded and on the
    # single-threaded Reference platform, equal calls give bitwise-equal structures.
    with _seeded_python_random(seed):
        modeller.addHydrogens(forcefield, pH=7.0, platform=openmm.Platform.getPlatformByName("Reference"))
    if solvent == "explicit":
        with _seeded_python_random(seed):  # Modeller places the counter-ions with Python's random
            modeller.addSolvent(
                forcefield, model="tip3p", padding=padding_nm * unit.nanometer, neutralize=True
            )
    positions = np.asarray(modeller.positions.value_in_unit(unit.nanometer)) * NM_TO_ANGSTROM
    box = modeller.topology.getPeriodicBoxVectors()
    cell = None if box is None else np.asarray(box.value_in_unit(unit.nanometer)) * NM_TO_ANGSTROM
    return modeller.topology, positions, cell


def create_peptide_system(topology: app.Topology, solvent: str) -> openmm.System:
    """amber14 system with the force groups of :data:`PART_GROUPS` (HBonds constraints)."""
    forcefield = app.ForceField(*FORCE_FIELDS[solvent])
    if solvent == "implicit":
        system = forcefield.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
    else:
        system = forcefield.createSystem(
            topology, nonbondedMethod=app.PME, nonbondedCutoff=0.9 * unit.nanometer, constraints=app.HBonds
        )
    groups = PART_GROUPS[solvent]
    for force in system.getForces():
        if isinstance(force, openmm.NonbondedForce):
            force.setForceGroup(groups["nonbonded" if solvent == "implicit" else "direct"])
            if solvent == "explicit":
                force.setReciprocalSpaceForceGroup(groups["reciprocal"])
        elif isinstance(force, (openmm.CustomGBForce, openmm.GBSAOBCForce)):
            force.setForceGroup(groups["solvation"])
        else:
            force.setForceGroup(groups["bonded"])
    return system


def _context(system, integrator, device: str, threads: int | None) -> openmm.Context:
    platform = {"cpu": "CPU", "cuda": "CUDA", "reference": "Reference"}.get(device.lower())
    if platform is None:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'reference', got {device!r}")
    return omm.make_context(
        system, integrator, platform=platform, threads=threads if platform == "CPU" else None
    )


def evaluate(context: openmm.Context, parts: dict[str, int], positions: bool = False) -> dict[str, Any]:
    """Energy (eV), forces (N, 3) eV/Å, ``forces_<part>`` and ``energy_<part>``; with ``positions``
    also ``positions`` (N, 3) Å (unwrapped) and, when periodic, ``cell`` (3, 3) Å."""
    state = context.getState(getForces=True, getEnergy=True, getPositions=positions)
    out: dict[str, Any] = {K.FORCES: omm._forces_ev(state), K.ENERGY: omm._energy_ev(state)}
    for part, group in parts.items():
        part_state = context.getState(getForces=True, getEnergy=True, groups={group})
        out[K.FORCE_PART_PREFIX + part] = omm._forces_ev(part_state)
        out[f"{K.ENERGY}_{part}"] = omm._energy_ev(part_state)
    if positions:
        out[K.POSITIONS] = (
            np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)) * NM_TO_ANGSTROM
        )
        if context.getSystem().usesPeriodicBoundaryConditions():
            box = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)
            out[K.CELL] = np.asarray(box) * NM_TO_ANGSTROM
    return out


# ------------------------------------------------------------------ reference
def _rebuild(meta: dict[str, Any]) -> tuple[app.Topology, openmm.System, str]:
    if meta.get("generator") != GENERATOR or "pdb" not in meta:
        raise ValueError(
            "not a peptide dataset: its meta lacks the generator 'scalepool.data.peptide' or 'pdb'"
        )
    solvent = meta["parameters"]["solvent"]
    topology = app.PDBFile(io.StringIO(meta["pdb"])).topology
    return topology, create_peptide_system(topology, solvent), solvent


def peptide_reference(
    frames: FrameSet, index: int, *, device: str = "cpu", threads: int | None = 1
) -> dict[str, Any]:
    """Recompute frame ``index`` of a peptide dataset with a fresh OpenMM context.

    The system is rebuilt from ``meta["pdb"]`` and the stored force-field files.
    Returns (float64) ``forces`` (N, 3) eV/Å, ``forces_<part>``, ``energy`` eV and
    ``energy_<part>`` eV.  ``device``: "cpu", "cuda" or "reference" (double precision).
    """
    if not -frames.n_frames <= index < frames.n_frames:
        raise IndexError(f"frame {index} out of range for {frames.n_frames} frames")
    _, system, solvent = _rebuild(frames.meta)
    context = _context(system, openmm.VerletIntegrator(1e-3), device, threads)
    if frames.cell is not None:
        omm.set_frame(context, frames.positions[index], frames.cell[index])
    else:
        context.setPositions(frames.positions[index] / NM_TO_ANGSTROM)
    return evaluate(context, PART_GROUPS[solvent])


# ------------------------------------------------------------------ sampling
def _split(n_frames: int, n_segments: int) -> list[int]:
    base, extra = divmod(n_frames, n_segments)
    return [base + (k < extra) for k in range(n_segments)]


def generate_peptide(
    n_frames: int = 600,
    seed: int = 0,
    sequence: str = CHIGNOLIN,
    solvent: str = "implicit",
    segments: tuple[tuple[str, float], ...] = SEGMENTS,
    stride_ps: float = 1.0,
    equilibration_ps: float = 20.0,
    timestep_fs: float = 2.0,
    friction_per_ps: float = 1.0,
    padding_nm: float = 1.0,
    minimize_iterations: int = 500,
    device: str = "cpu",
    threads: int | None = 1,
    progress: bool = True,
    *,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    restart: bool = False,
    out: str | os.PathLike | None = None,
) -> FrameSet:
    """Sample the peptide over ``segments`` (module docstring) and return the frames.

    Returns a FrameSet: positions (F, N, 3) Å, forces (F, N, 3) eV/Å, force parts
    (:data:`PART_GROUPS`), energy (F,) eV, cell None (implicit) or (F, 3, 3) Å, and
    meta with the PDB text, force fields, seeds, segments and per-frame observables.
    ``minimize_iterations``: limit of the minimisation before each segment's equilibration
    (the hairpin reference is minimised for :data:`REFERENCE_MINIMIZE_ITERATIONS` in GBn2).
    ``device``: OpenMM platform "cpu" (default), "cuda" or "reference".
    ``checkpoint``: folder with one resumable NaCl-style checkpoint per segment.
    """
    run_start = time.perf_counter()
    arguments = locals()
    p = {name: arguments[name] for name in inspect.signature(generate_peptide).parameters}
    p["segments"] = [[str(s), float(t)] for s, t in segments]
    for name in ("checkpoint", "out"):
        p[name] = None if p[name] is None else str(p[name])
    if not isinstance(n_frames, (int, np.integer)) or n_frames < len(segments) or not segments:
        raise ValueError(
            f"n_frames must be an integer >= the number of segments ({len(segments)}), got {n_frames!r}"
        )
    if solvent == "explicit" and len({start for start, _ in p["segments"]}) > 1:
        raise ValueError(
            "explicit solvent needs every segment to start from the same structure (the water count "
            f"depends on it), got starts {[s for s, _ in p['segments']]}; e.g. segments=(('hairpin', 300), ('hairpin', 450))"
        )
    if out is not None and Path(out).suffix != ".npz":
        raise ValueError(f"dataset files end in .npz, got {out}")
    stride_steps = round(stride_ps * 1e3 / timestep_fs)
    if stride_steps < 1 or abs(stride_steps * timestep_fs - stride_ps * 1e3) > 1e-6:
        raise ValueError(
            f"stride_ps ({stride_ps} ps) must be a positive multiple of the time step ({timestep_fs} fs)"
        )
    equilibration_steps = round(equilibration_ps * 1e3 / timestep_fs)
    ref_topology, ref_positions, _ = build_peptide(sequence, "hairpin", "implicit")
    reference_ca = _minimised_ca(ref_topology, ref_positions, threads)
    chunks, pdb_text, topology, cell0 = [], None, None, None
    seeds = np.random.SeedSequence(seed).generate_state(2 * len(segments), dtype=np.uint32) % (2**31 - 1) + 1
    identity = {**{k: v for k, v in p.items() if k not in RUN_OPTIONS}, "openmm_version": openmm.__version__}
    for k, ((start, temperature), count) in enumerate(
        zip(p["segments"], _split(n_frames, len(segments)), strict=True)
    ):
        topology, positions, cell0 = build_peptide(sequence, start, solvent, padding_nm, seed)
        system = create_peptide_system(topology, solvent)
        integrator = openmm.LangevinMiddleIntegrator(
            temperature * unit.kelvin, friction_per_ps / unit.picosecond, timestep_fs * unit.femtosecond
        )
        integrator.setRandomNumberSeed(int(seeds[2 * k + 1]))
        context = _context(system, integrator, device, threads)
        store = None
        if checkpoint is not None:
            store = NaclCheckpoint(
                Path(checkpoint) / f"segment_{k}", {**identity, "segment": k}, restart=restart
            )
        with store or contextlib.nullcontext():
            resumed = store.load() if store is not None else None
            if resumed is None:
                if cell0 is not None:
                    omm.set_frame(context, positions, cell0)
                else:
                    context.setPositions(positions / NM_TO_ANGSTROM)
                openmm.LocalEnergyMinimizer.minimize(context, 10.0, minimize_iterations)
                context.setVelocitiesToTemperature(temperature * unit.kelvin, int(seeds[2 * k]))
                if equilibration_steps:
                    integrator.step(equilibration_steps)
                context.reinitialize(preserveState=True)
            parts = PART_GROUPS[solvent]
            frames, book = sample_frames(
                context, integrator, lambda c, parts=parts: _frame(c, parts), n_frames=count,
                stride_steps=stride_steps, store=store, resumed=resumed,
                book={"resumes": 0, "parts_error": 0.0, "timings": {"setup_s": 0.0, "sample_s": 0.0, "wall_s": 0.0}},
                checkpoint_every=checkpoint_every, progress=progress, run_start=run_start,
            )  # fmt: skip
        chunks.append((frames, book, temperature, k))
    buffer = io.StringIO()
    app.PDBFile.writeFile(topology, positions / NM_TO_ANGSTROM * unit.nanometer, buffer)
    pdb_text = buffer.getvalue()
    result = _assemble(
        p, chunks, topology, pdb_text, reference_ca, seeds, stride_steps, equilibration_steps, run_start
    )
    if out is not None:
        result.save(out)
    if checkpoint is not None:
        shutil.rmtree(checkpoint, ignore_errors=True)
    return result


def _minimised_ca(topology: app.Topology, positions: np.ndarray, threads: int | None) -> np.ndarray:
    """C-alpha positions (n, 3) Å of the energy-minimised (implicit solvent) structure."""
    context = _context(
        create_peptide_system(topology, "implicit"), openmm.VerletIntegrator(1e-3), "cpu", threads
    )
    context.setPositions(positions / NM_TO_ANGSTROM)
    openmm.LocalEnergyMinimizer.minimize(context, 10.0, REFERENCE_MINIMIZE_ITERATIONS)
    xyz = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    return np.asarray(xyz)[_ca_index(topology)] * NM_TO_ANGSTROM


def _ca_index(topology: app.Topology) -> np.ndarray:
    return np.array([a.index for a in topology.atoms() if a.name == "CA" and a.residue.name != "HOH"])


def _frame(context: openmm.Context, parts: dict[str, int]) -> tuple[dict[str, np.ndarray], float]:
    result = evaluate(context, parts, positions=True)
    keys = [K.POSITIONS, K.ENERGY, K.FORCES, *(K.FORCE_PART_PREFIX + p for p in parts)]
    if K.CELL in result:
        keys.append(K.CELL)
    total = sum(result[K.FORCE_PART_PREFIX + p] for p in parts)
    return {key: result[key] for key in keys}, float(np.max(np.abs(total - result[K.FORCES])))


def _assemble(
    p, chunks, topology, pdb_text, reference_ca, seeds, stride_steps, equilibration_steps, run_start
):
    arrays = {key: np.concatenate([c[0][key] for c in chunks]) for key in chunks[0][0]}
    temperature = np.concatenate([np.full(len(c[0][K.ENERGY]), c[2]) for c in chunks])
    segment = np.concatenate([np.full(len(c[0][K.ENERGY]), c[3]) for c in chunks])
    observables = folding_observables(arrays[K.POSITIONS][:, _ca_index(topology)], reference_ca)
    parts = PART_GROUPS[p["solvent"]]
    numbers = np.array([atom.element.atomic_number for atom in topology.atoms()], dtype=np.int64)
    sample_s = sum(c[1]["timings"]["sample_s"] for c in chunks)
    meta = {
        "generator": GENERATOR,
        "parameters": p,
        "seed": p["seed"],
        "openmm_seeds": [int(s) for s in seeds],
        "openmm_version": openmm.__version__,
        "force_field_files": list(FORCE_FIELDS[p["solvent"]]),
        "create_system": {"nonbondedMethod": "NoCutoff" if p["solvent"] == "implicit" else "PME",
                          "nonbondedCutoff_nm": None if p["solvent"] == "implicit" else 0.9,
                          "constraints": "HBonds", "forces_include_constraint_forces": False},
        "pdb": pdb_text,
        "sequence": p["sequence"],
        "n_atoms": len(numbers),
        "force_groups": dict(parts),
        "segments": [{"start": s, "temperature_k": t} for s, t in p["segments"]],
        "stride_steps": stride_steps,
        "equilibration_steps": equilibration_steps,
        "integrator": "LangevinMiddleIntegrator",
        "ensemble": "NVT",
        "reference_structure": "model hairpin (HAIRPIN_DIHEDRALS, PeptideBuilder, 500 minimiser steps in GBn2), not 1UAO",
        "reference_ca": reference_ca.tolist(),
        "observables": {**{k: v.tolist() for k, v in observables.items()},
                        "temperature_k": temperature.tolist(), "segment": segment.astype(int).tolist()},
        "parts_sum_max_abs_error_ev_per_angstrom": max(c[1]["parts_error"] for c in chunks),
        "resumes": sum(c[1]["resumes"] for c in chunks),
        "timings": {"wall_s": time.perf_counter() - run_start, "sample_s": sample_s,
                    "s_per_frame": sample_s / max(len(temperature), 1)},
        "units": {"positions": "Å", "forces": "eV/Å", "energy": "eV", "cell": "Å"},
    }  # fmt: skip
    return FrameSet(
        positions=arrays[K.POSITIONS],
        forces=arrays[K.FORCES],
        numbers=numbers,
        cell=arrays.get(K.CELL),
        energy=arrays[K.ENERGY],
        force_parts={part: arrays[K.FORCE_PART_PREFIX + part] for part in parts},
        meta=meta,
    )
