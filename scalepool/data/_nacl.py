"""Aqueous NaCl reference data from OpenMM: TIP3P water, Joung-Cheatham ions, PME.

:func:`generate_nacl` solvates a cubic box, replaces random waters by Na+/Cl-
(seeded), minimises, equilibrates in NVT with a Langevin thermostat and then
stores one frame every ``stride_ps``: positions, the total reference force, its
``bonded`` / ``direct`` / ``reciprocal`` parts (OpenMM force groups, see
:mod:`scalepool.data._openmm`), the potential energy and the cell.
:func:`openmm_reference_forces` recomputes any stored frame with a fresh
context, so a dataset can be verified long after it was made.

Rigid water by default
----------------------
``rigid_water=True`` (``constraints=HBonds, rigidWater=True``) is the default
because (1) it allows 2 fs steps, four times fewer steps per ps than the 0.5 fs
that flexible TIP3P needs (measured 31 vs 7.8 ns/day on 2 cores), and (2) with
flexible water the stiff O-H bond and H-O-H angle forces dominate the force
RMS (about 1.8 eV/Å against about 1 eV/Å for everything else) and would hide
the ion and long-range physics the testbed is about.  With rigid water the
``bonded`` part is exactly zero (OpenMM drops constrained terms) but it is
stored anyway so every dataset has the same arrays.  ``rigid_water=False``
gives flexible TIP3P, with a 0.5 fs default time step.

Constrained forces
------------------
OpenMM's ``getForces`` returns the force-field force on every atom *without*
constraint forces.  For rigid water the stored force is therefore the
unconstrained force-field force (the usual label for learned force fields),
not the acceleration the constrained dynamics actually followed.

Ensemble
--------
NVT only: the box is the one ``Modeller.addSolvent`` builds from OpenMM's
pre-equilibrated water box at the requested edge length, and it stays fixed
(no barostat), so every frame has the same cell.  Positions are stored wrapped
by molecule (``enforcePeriodicBox``): waters stay whole, molecule centres lie
in the cell.

Reproducibility
---------------
The CPU platform runs with ``DeterministicForces=true``.  With one thread (the
default) the same seed then gives bitwise identical datasets: ion placement,
minimisation, velocities and Langevin noise are all seeded.  With two or more
threads OpenMM's force accumulation order varies from call to call (force
differences near 1e-4 eV/Å even with ``DeterministicForces``), the minimiser
amplifies them and the trajectory diverges, so only the statistics repeat.
On a busy 2-core machine one thread was also faster than two (about 160 vs
115 steps/s for 1,467 atoms).

Checkpoints
-----------
``checkpoint=FOLDER`` makes a run resumable: a later call with the same
parameters continues from the last save, and with one thread the result is
bitwise that of an uninterrupted run (every frame ends with
``Context.reinitialize(preserveState=True)``); details in
:mod:`scalepool.data._nacl_checkpoint`.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import random
import time
import warnings

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit

from ..units import CHLORINE, NM_TO_ANGSTROM, PS_TO_FS, SODIUM
from . import _keys as K
from . import _openmm as omm
from ._frameset import FrameSet
from ._nacl_checkpoint import CheckpointMismatch, NaclCheckpoint, sample_frames

GENERATOR = "scalepool.data.nacl"
#: Real-space cutoff (nm) and PME error tolerance of the testbed.
CUTOFF_NM = 0.9
EWALD_ERROR_TOLERANCE = 5e-4
#: Default time steps (fs) for rigid and flexible water.
TIMESTEP_FS = {True: 2.0, False: 0.5}
#: Largest |sum of parts - total| (eV/Å) accepted without a warning.
PARTS_SUM_WARN = 1e-3
#: Arrays kept for every sampled frame.
FRAME_KEYS = (K.POSITIONS, K.CELL, K.ENERGY, K.FORCES, *(K.FORCE_PART_PREFIX + p for p in omm.PART_GROUPS))
#: Arguments that steer a run but not its data: free to change when resuming.
RUN_OPTIONS = ("progress", "checkpoint", "checkpoint_every", "restart", "out")

__all__ = ["CheckpointMismatch", "build_nacl_system", "generate_nacl", "openmm_reference_forces"]


@contextlib.contextmanager
def _seeded_python_random(seed: int):
    """Seed the global :mod:`random` (used by ``Modeller`` for ion placement), then restore it."""
    saved = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(saved)


def _openmm_seeds(seed: int) -> tuple[int, int]:
    """Two positive 31-bit seeds (velocities, integrator); OpenMM reads 0 as 'random'."""
    state = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint32)
    return tuple(int(s % (2**31 - 1)) + 1 for s in state)


def build_nacl_system(
    box_nm: float = 2.5,
    molarity: float = 1.0,
    seed: int = 0,
    rigid_water: bool = True,
    cutoff_nm: float = CUTOFF_NM,
    ewald_error_tolerance: float = EWALD_ERROR_TOLERANCE,
) -> tuple[app.Topology, openmm.System, np.ndarray]:
    """Solvate a cubic box with TIP3P and NaCl and create its PME system.

    Waters come from OpenMM's pre-equilibrated box (deterministic); ions replace
    waters chosen by ``Modeller`` with Python's :mod:`random`, seeded here with
    ``seed`` (the global state is restored afterwards).  The ion count follows
    ``Modeller``: ``round(n_water * molarity / 55.4 M)`` pairs; the system is
    neutral.

    Returns ``(topology, system, positions)`` with positions (N, 3) float64 in Å;
    the box is ``topology.getPeriodicBoxVectors()``.  Force groups as in
    :mod:`scalepool.data._openmm`.
    """
    forcefield = omm.make_forcefield()
    modeller = app.Modeller(app.Topology(), [])
    with _seeded_python_random(seed):
        modeller.addSolvent(
            forcefield,
            boxSize=openmm.Vec3(box_nm, box_nm, box_nm) * unit.nanometer,
            positiveIon="Na+",
            negativeIon="Cl-",
            ionicStrength=molarity * unit.molar,
            neutralize=True,
        )
    system = omm.create_system(
        modeller.topology,
        rigid_water=rigid_water,
        cutoff_nm=cutoff_nm,
        ewald_error_tolerance=ewald_error_tolerance,
        forcefield=forcefield,
    )
    positions = (
        np.asarray(modeller.positions.value_in_unit(unit.nanometer), dtype=np.float64) * NM_TO_ANGSTROM
    )
    return modeller.topology, system, positions


def _validate(
    *,
    n_frames,
    box_nm,
    molarity,
    stride_ps,
    equilibration_ps,
    timestep_fs,
    temperature_k,
    threads,
    cutoff_nm,
    **_,
):
    """Check the generator's arguments; return the number of steps per stride."""
    if not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise ValueError(f"n_frames must be an integer >= 1, got {n_frames!r}")
    if not box_nm > 2 * cutoff_nm:
        raise ValueError(
            f"box_nm must exceed twice the {cutoff_nm} nm cutoff (minimum image), got {box_nm} nm"
        )
    if not molarity >= 0:
        raise ValueError(f"molarity must be >= 0 mol/L, got {molarity}")
    if not temperature_k > 0:
        raise ValueError(f"temperature_k must be > 0 K, got {temperature_k}")
    if not timestep_fs > 0:
        raise ValueError(f"timestep_fs must be > 0 fs, got {timestep_fs}")
    if not equilibration_ps >= 0:
        raise ValueError(f"equilibration_ps must be >= 0 ps, got {equilibration_ps}")
    if threads is not None and (not isinstance(threads, (int, np.integer)) or threads < 1):
        raise ValueError(f"threads must be None or an integer >= 1, got {threads!r}")
    stride_steps = round(stride_ps * PS_TO_FS / timestep_fs)
    if stride_steps < 1 or not math.isclose(stride_steps * timestep_fs, stride_ps * PS_TO_FS, rel_tol=1e-9):
        raise ValueError(
            f"stride_ps ({stride_ps} ps) must be a positive multiple of the time step ({timestep_fs} fs)"
        )
    return stride_steps


def _metadata(*, parameters, numbers, topology, system, context, openmm_seeds, steps, parts_error, timings):
    """The provenance dict stored as ``FrameSet.meta`` (JSON-serialisable)."""
    rigid = bool(parameters["rigid_water"])
    threads = int(context.getPlatform().getPropertyValue(context, "Threads"))
    n_na, n_cl = int((numbers == SODIUM).sum()), int((numbers == CHLORINE).sum())
    nb = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
    # A freshly (re)initialised context sets up its PME kernel on the first
    # force evaluation; asking for the parameters before that fails.
    context.getState(getEnergy=True)
    alpha, *grid = nb.getPMEParametersInContext(context)
    return {
        "generator": GENERATOR,
        "parameters": parameters,
        "seed": parameters["seed"],
        "openmm_seeds": openmm_seeds,
        "openmm_version": openmm.__version__,
        "platform": context.getPlatform().getName(),
        "threads": threads,
        "deterministic_forces": True,
        "bitwise_reproducible": threads == 1,
        "force_field_files": list(omm.FORCE_FIELD_FILES),
        "water_model": "TIP3P (rigid)" if rigid else "TIP3P (flexible)",
        "constraints": {
            "constraints": "HBonds" if rigid else None,
            "rigid_water": rigid,
            "n_constraints": system.getNumConstraints(),
            "forces_include_constraint_forces": False,
        },
        "nonbonded": {
            "method": "PME",
            "cutoff_nm": parameters["cutoff_nm"],
            "ewald_error_tolerance": parameters["ewald_error_tolerance"],
            "pme_alpha_per_nm": alpha,
            "pme_grid": grid,
        },
        "integrator": "LangevinMiddleIntegrator",
        "ensemble": "NVT",
        "force_groups": dict(omm.PART_GROUPS),
        "positions": "wrapped by molecule (enforcePeriodicBox)",
        **steps,
        "n_atoms": len(numbers),
        "n_water": sum(1 for r in topology.residues() if r.name == "HOH"),
        "n_na": n_na,
        "n_cl": n_cl,
        "parts_sum_max_abs_error_ev_per_angstrom": parts_error,
        "timings": timings,
        "units": {"positions": "Å", "forces": "eV/Å", "energy": "eV", "cell": "Å"},
    }


def generate_nacl(
    n_frames: int = 200,
    seed: int = 0,
    box_nm: float = 2.5,
    molarity: float = 1.0,
    stride_ps: float = 1.0,
    equilibration_ps: float = 20.0,
    timestep_fs: float | None = None,
    temperature_k: float = 300.0,
    rigid_water: bool = True,
    threads: int | None = 1,
    progress: bool = True,
    *,
    friction_per_ps: float = 1.0,
    cutoff_nm: float = CUTOFF_NM,
    ewald_error_tolerance: float = EWALD_ERROR_TOLERANCE,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 10,
    restart: bool = False,
    out: str | os.PathLike | None = None,
) -> FrameSet:
    """Run NaCl(aq) molecular dynamics with OpenMM and return the sampled frames.

    Parameters
    ----------
    n_frames : frames to store, one every ``stride_ps`` after equilibration.
    seed : seeds ion placement, initial velocities and the Langevin noise.
    box_nm : cubic box edge (nm); must exceed twice ``cutoff_nm``.
    molarity : NaCl concentration (mol/L) passed to ``Modeller`` as ionic strength.
    stride_ps, equilibration_ps : sampling interval and NVT equilibration (ps).
    timestep_fs : integration step (fs); ``None`` picks 2 fs for rigid water
        and 0.5 fs for flexible water.
    temperature_k, friction_per_ps : ``LangevinMiddleIntegrator`` settings.
    rigid_water : rigid TIP3P + H-bond constraints (default, see module
        docstring) or flexible water.
    threads : CPU platform threads; ``None`` lets OpenMM choose.  Only
        ``threads=1`` (the default) is bitwise reproducible, see module docstring.
    progress : show a tqdm bar over the sampled frames.
    checkpoint : folder that makes the run resumable (see "Checkpoints" in the
        module docstring); ``None`` (default) keeps everything in memory.  A
        checkpoint of the same parameters found there is continued; one of
        other parameters raises :class:`CheckpointMismatch`.  The folder is
        deleted when the run succeeds.
    checkpoint_every : frames between checkpoint saves.
    restart : delete an existing ``checkpoint`` folder and start over.
    out : also save the dataset there (atomically, ``.npz``), before the
        checkpoint folder is deleted, so that no moment of the run can lose it.

    Returns
    -------
    FrameSet with positions (F, N, 3) Å, forces (F, N, 3) eV/Å (without
    constraint forces), force_parts ``bonded``/``direct``/``reciprocal`` (F, N, 3)
    eV/Å, energy (F,) eV, cell (F, 3, 3) Å and a ``meta`` dict with every
    parameter, versions, seeds, composition, timings, resumes and the parts-sum check.
    """
    run_start = time.perf_counter()
    arguments = locals()
    parameters = {name: arguments[name] for name in inspect.signature(generate_nacl).parameters}
    for name in ("checkpoint", "out"):
        parameters[name] = None if parameters[name] is None else str(parameters[name])
    if timestep_fs is None:
        timestep_fs = TIMESTEP_FS[bool(rigid_water)]
    stride_steps = _validate(**{**parameters, "timestep_fs": timestep_fs})
    if not isinstance(checkpoint_every, (int, np.integer)) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be an integer >= 1, got {checkpoint_every!r}")
    if out is not None and not str(out).endswith(".npz"):
        raise ValueError(f"dataset files end in .npz, got {out}")
    parameters["timestep_fs_used"] = timestep_fs
    steps = {
        "stride_steps": stride_steps,
        "equilibration_steps": round(equilibration_ps * PS_TO_FS / timestep_fs),
    }
    identity = {
        **{key: value for key, value in parameters.items() if key not in RUN_OPTIONS},
        **steps,
        "openmm_version": openmm.__version__,
    }
    store = None if checkpoint is None else NaclCheckpoint(checkpoint, identity, restart=restart)
    with store or contextlib.nullcontext():
        frameset = _simulate(parameters, steps, store, run_start)
        if out is not None:
            frameset.save(out)
        if store is not None:
            store.remove()
    return frameset


def _simulate(p: dict, steps: dict, store: NaclCheckpoint | None, run_start: float) -> FrameSet:
    """Set up or resume the simulation, sample the frames, assemble the FrameSet."""
    resumed = store.load() if store is not None else None

    t0 = time.perf_counter()
    topology, system, positions = build_nacl_system(
        p["box_nm"], p["molarity"], p["seed"], p["rigid_water"], p["cutoff_nm"], p["ewald_error_tolerance"]
    )
    velocity_seed, integrator_seed = _openmm_seeds(p["seed"])
    integrator = openmm.LangevinMiddleIntegrator(
        p["temperature_k"] * unit.kelvin,
        p["friction_per_ps"] / unit.picosecond,
        p["timestep_fs_used"] * unit.femtosecond,
    )
    integrator.setRandomNumberSeed(integrator_seed)
    context = omm.make_context(system, integrator, platform="CPU", threads=p["threads"])
    setup_s = time.perf_counter() - t0

    book = {"resumes": 0, "parts_error": 0.0, "timings": {"setup_s": setup_s, "sample_s": 0.0, "wall_s": 0.0}}
    if resumed is None:
        context.setPositions(positions / NM_TO_ANGSTROM)
        t0 = time.perf_counter()
        openmm.LocalEnergyMinimizer.minimize(context, 10.0, 5000)
        book["timings"]["minimise_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        context.setVelocitiesToTemperature(p["temperature_k"] * unit.kelvin, velocity_seed)
        if steps["equilibration_steps"]:
            integrator.step(steps["equilibration_steps"])
        context.reinitialize(preserveState=True)  # a frame boundary, see "Checkpoints"
        book["timings"]["equilibrate_s"] = time.perf_counter() - t0
    frames, book = sample_frames(
        context,
        integrator,
        _frame,
        n_frames=p["n_frames"],
        stride_steps=steps["stride_steps"],
        store=store,
        resumed=resumed,
        book=book,
        checkpoint_every=p["checkpoint_every"],
        progress=p["progress"],
        run_start=run_start,
    )
    return _assemble(p, steps, book, frames, topology, system, context, (velocity_seed, integrator_seed))


def _frame(context: openmm.Context) -> tuple[dict[str, np.ndarray], float]:
    """The stored arrays of the context's current frame and its parts-sum error (eV/Å)."""
    result = omm.evaluate(context, positions=True)
    return {key: result[key] for key in FRAME_KEYS}, omm.parts_sum_error(result)


def _assemble(p, steps, book, frames, topology, system, context, seeds) -> FrameSet:
    """The FrameSet with its metadata; warns when the force parts do not add up."""
    timings = book["timings"]
    total_steps = steps["equilibration_steps"] + p["n_frames"] * steps["stride_steps"]
    timings["steps_per_s"] = total_steps / max(timings["equilibrate_s"] + timings["sample_s"], 1e-12)
    if book["parts_error"] > PARTS_SUM_WARN:
        warnings.warn(
            f"force parts differ from the total by up to {book['parts_error']:.3g} eV/Å "
            f"(more than {PARTS_SUM_WARN} eV/Å); check the force groups",
            RuntimeWarning,
            stacklevel=4,  # the caller of generate_nacl
        )
    numbers = np.array([atom.element.atomic_number for atom in topology.atoms()], dtype=np.int64)
    meta = _metadata(
        parameters=p,
        numbers=numbers,
        topology=topology,
        system=system,
        context=context,
        openmm_seeds={"velocities": seeds[0], "integrator": seeds[1]},
        steps=steps,
        parts_error=book["parts_error"],
        timings=timings,
    )
    meta["resumes"] = book["resumes"]
    return FrameSet(
        positions=frames[K.POSITIONS],
        forces=frames[K.FORCES],
        numbers=numbers,
        cell=frames[K.CELL],
        energy=frames[K.ENERGY],
        force_parts={part: frames[K.FORCE_PART_PREFIX + part] for part in omm.PART_GROUPS},
        meta=meta,
    )


def openmm_reference_forces(
    frameset: FrameSet, frame: int, *, platform: str = "CPU", threads: int | None = None
) -> dict[str, np.ndarray | float]:
    """Recompute one stored frame with a fresh OpenMM context.

    The topology is rebuilt from ``frameset.numbers`` (O,H,H waters and Na/Cl
    ions) and the system from the parameters in ``frameset.meta`` (cutoff, PME
    tolerance, rigid or flexible water; the testbed defaults when absent).

    Returns ``forces`` (N, 3) eV/Å total, ``forces_bonded``, ``forces_direct``,
    ``forces_reciprocal`` (N, 3) eV/Å, ``energy`` (eV) and ``energy_<part>`` (eV),
    all float64.  ``platform`` is 'CPU' (the generator's) or 'Reference'
    (double precision, slow, an independent implementation).
    """
    context = _frame_context(frameset, frame, platform, threads)
    omm.set_frame(context, frameset.positions[frame], frameset.cell[frame])
    return omm.evaluate(context)


def openmm_force_function(frameset: FrameSet, frame: int, *, platform: str = "Reference", threads: int | None = 1):
    """A callable ``positions (N, 3) Å -> forces (N, 3) eV/Å`` (float64): the OpenMM total
    force of the dataset's system in ``frame``'s cell, for finite differences (Hessians)."""
    context = _frame_context(frameset, frame, platform, threads if platform == "CPU" else None)
    cell = frameset.cell[frame]

    def forces(positions: np.ndarray) -> np.ndarray:
        omm.set_frame(context, positions, cell)
        return omm.evaluate(context)["forces"]

    return forces


def _frame_context(frameset: FrameSet, frame: int, platform: str, threads: int | None) -> openmm.Context:
    """A fresh OpenMM context of ``frameset``'s system in ``frame``'s cell (parameters from ``meta``)."""
    if frameset.cell is None:
        raise ValueError("OpenMM reference forces need a periodic dataset (cell is None)")
    if not -frameset.n_frames <= frame < frameset.n_frames:
        raise IndexError(f"frame {frame} out of range for {frameset.n_frames} frames")
    params = frameset.meta.get("parameters", {})
    nonbonded = frameset.meta.get("nonbonded", {})
    system = omm.create_system(
        omm.topology_from_numbers(frameset.numbers, frameset.cell[frame]),
        rigid_water=bool(params.get("rigid_water", True)),
        cutoff_nm=float(nonbonded.get("cutoff_nm", CUTOFF_NM)),
        ewald_error_tolerance=float(nonbonded.get("ewald_error_tolerance", EWALD_ERROR_TOLERANCE)),
    )
    return omm.make_context(system, openmm.VerletIntegrator(1e-3), platform=platform, threads=threads)
