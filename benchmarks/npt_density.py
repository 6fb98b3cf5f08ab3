"""Density of the NaCl testbed under ASE NPT with a trained model, against OpenMM NPT.

Starts from one frame of the testbed (``FrameSet``; the box of the OpenMM
generator), rigid water (:class:`~scalepool.md.RigidBonds`), Maxwell-Boltzmann
velocities at ``--temperature``, and runs ASE's ``NPTBerendsen`` (1 bar, water
compressibility 4.57e-5 /bar) with :class:`~scalepool.md.ScalepoolCalculator`
in its molecular-pressure mode (``molecules="water"``: centre-of-mass virial
and ideal-gas term, see :mod:`scalepool.md._molecular`).  The reference is an
OpenMM NPT run of the same force field (TIP3P + Joung-Cheatham, PME, rigid
water, ``MonteCarloBarostat``) from the same frame.  Prints, per run, the
density (g/cm^3) at the start, its mean and standard deviation over the last
half, the drift over the last half (slope of a linear fit, g/cm^3/ps) and the
mean molecular pressure (bar) over the last half.

    python benchmarks/npt_density.py --model /tmp/spq/demo/runs/seed0/short/best.pt \\
        --steps 2000 --openmm-steps 10000 --trace /tmp/npt_short.csv --out results/npt/short.csv

``--out PATH`` writes the table as a CSV (one row per run: densities in g/cm^3,
pressures in bar, the last-half mean temperature in K, the start frame's
molecular virial pressure and the centre-of-mass ideal-gas term, the failure
if a run stopped, and each model's atomic virial pressure at the start frame) with
``PATH.provenance.json``; the README's ``npt-density``
block is generated from such files.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

#: g/cm^3 per (amu/Å^3).
AMU_PER_A3_TO_G_PER_CM3 = 1.66053906660


def density(atoms) -> float:
    """g/cm^3 of ASE Atoms."""
    return float(atoms.get_masses().sum() / atoms.get_volume() * AMU_PER_A3_TO_G_PER_CM3)


def last_half_stats(time_ps: np.ndarray, rho: np.ndarray, pressure: np.ndarray | None = None) -> dict:
    """Mean, std and linear drift (per ps) of ``rho`` over the second half of the run."""
    half = len(rho) // 2
    t, r = time_ps[half:], rho[half:]
    drift = float(np.polyfit(t, r, 1)[0]) if len(r) > 2 else float("nan")
    out = {"start": float(rho[0]), "mean": float(r.mean()), "std": float(r.std()), "drift": drift}
    out["pressure"] = float(np.mean(pressure[half:])) if pressure is not None else float("nan")
    return out


def run_ase(args, model_path: str, data) -> tuple[dict, list]:
    from ase import Atoms, units
    from ase.md.nptberendsen import NPTBerendsen
    from ase.md.velocitydistribution import Stationary, thermalize_momenta

    from scalepool.md import RigidBonds, ScalepoolCalculator, rigid_water_pairs

    frame = args.frame % len(data.positions)
    atoms = Atoms(numbers=data.numbers, positions=data.positions[frame], cell=data.cell[frame], pbc=True)
    atoms.set_constraint(RigidBonds(rigid_water_pairs(atoms.numbers), tolerance=1e-10))
    atoms.calc = ScalepoolCalculator.from_file(
        model_path, device=args.device, float64=args.float64, molecules="water"
    )
    thermalize_momenta(atoms, temperature_K=args.temperature, rng=np.random.default_rng(args.seed))
    Stationary(atoms)
    atoms.set_momenta(atoms.get_momenta())  # RATTLE: no velocity along a bond
    dyn = NPTBerendsen(
        atoms,
        timestep=args.timestep * units.fs,
        temperature_K=args.temperature,
        pressure_au=args.pressure * units.bar,
        taut=args.taut * units.fs,
        taup=args.taup * units.fs,
        compressibility_au=args.compressibility / units.bar,
    )
    trace = []

    def record(step: int) -> None:
        pressure = -atoms.get_stress(include_ideal_gas=True)[:3].mean() / units.bar
        trace.append((step, step * args.timestep * 1e-3, density(atoms), pressure, atoms.get_temperature()))

    record(0)
    t0 = time.perf_counter()
    failure = ""
    for step in range(1, args.steps + 1):
        try:
            dyn.run(1)
        except RuntimeError as error:  # e.g. SHAKE fails once the model lets molecules overlap
            failure = f"stopped at step {step}: {error}"
            print(f"  {failure}", flush=True)
            break
        record(step)
        if step % max(1, args.steps // 10) == 0:
            _, t, rho, p, temp = trace[-1]
            rate = (time.perf_counter() - t0) / step
            print(
                f"  step {step:5d}  {t:.3f} ps  rho {rho:.4f}  P {p:8.1f} bar  T {temp:6.1f} K  {rate:.2f} s/step",
                flush=True,
            )
    arr = np.asarray(trace)
    stats = last_half_stats(arr[:, 1], arr[:, 2], arr[:, 3])
    stats["temperature"] = float(arr[len(arr) // 2 :, 4].mean())
    done = len(trace) - 1
    stats.update(
        steps=done,
        ps=done * args.timestep * 1e-3,
        s_per_step=(time.perf_counter() - t0) / max(done, 1),
        failure=failure,
    )
    return stats, trace


def run_openmm(args, data) -> tuple[dict, list]:
    import openmm
    import openmm.unit as u

    from scalepool.data import build_nacl_system

    p = data.meta.get("parameters", {})
    topology, system, _ = build_nacl_system(
        box_nm=p.get("box_nm", 2.5), molarity=p.get("molarity", 1.0), seed=p.get("seed", 0), rigid_water=True
    )
    numbers = np.array([a.element.atomic_number for a in topology.atoms()])
    if not np.array_equal(numbers, data.numbers):
        raise SystemExit("the rebuilt OpenMM system does not match the dataset's atoms")
    system.addForce(openmm.MonteCarloBarostat(args.pressure * u.bar, args.temperature * u.kelvin, 25))
    integrator = openmm.LangevinMiddleIntegrator(
        args.temperature * u.kelvin, 1.0 / u.picosecond, args.openmm_timestep * u.femtosecond
    )
    integrator.setRandomNumberSeed(args.seed + 1)
    platform = openmm.Platform.getPlatformByName("CPU")
    context = openmm.Context(system, integrator, platform, {"Threads": str(args.threads)})
    frame = args.frame % len(data.positions)
    a, b, c = (np.asarray(data.cell[frame], float) / 10.0).tolist()
    context.setPeriodicBoxVectors(openmm.Vec3(*a), openmm.Vec3(*b), openmm.Vec3(*c))
    context.setPositions(np.asarray(data.positions[frame], float) / 10.0)
    context.setVelocitiesToTemperature(args.temperature * u.kelvin, args.seed + 2)
    mass_amu = float(
        sum(system.getParticleMass(i).value_in_unit(u.dalton) for i in range(system.getNumParticles()))
    )
    every = 25
    trace = []
    t0 = time.perf_counter()
    for k in range(args.openmm_steps // every + 1):
        if k:
            integrator.step(every)
        volume = context.getState().getPeriodicBoxVolume().value_in_unit(u.angstrom**3)
        trace.append(
            (k * every, k * every * args.openmm_timestep * 1e-3, mass_amu / volume * AMU_PER_A3_TO_G_PER_CM3)
        )
    arr = np.asarray(trace)
    stats = last_half_stats(arr[:, 1], arr[:, 2])
    steps = (len(trace) - 1) * every
    stats.update(
        steps=steps,
        ps=steps * args.openmm_timestep * 1e-3,
        s_per_step=(time.perf_counter() - t0) / max(steps, 1),
    )
    return stats, trace


def start_virial_pressures(args, data) -> tuple[dict[str, float], dict[str, float]]:
    """bar, no kinetic term, at the start frame: the molecular virial pressure of OpenMM's
    force field by central differences of its energy under a centre-of-mass strain (Reference
    platform, strain 1e-4) and of each model from the calculator's molecular stress; and each
    model's *atomic* virial pressure, what a barostat reading the atomic stress sees with rigid
    water (the constraint forces left out).  Returns (molecular, atomic), keyed by model path
    (molecular also by ``"OpenMM"``)."""
    import openmm
    import openmm.unit as u
    from ase import Atoms, units

    from scalepool.data import build_nacl_system
    from scalepool.md import ScalepoolCalculator, molecule_offsets, water_molecule_ids

    frame = args.frame % len(data.positions)
    x, cell = np.asarray(data.positions[frame], float), np.asarray(data.cell[frame], float)
    volume = abs(np.linalg.det(cell))
    p = data.meta.get("parameters", {})
    _, system, _ = build_nacl_system(
        box_nm=p.get("box_nm", 2.5), molarity=p.get("molarity", 1.0), seed=p.get("seed", 0), rigid_water=True
    )
    context = openmm.Context(
        system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference")
    )
    masses = np.array(
        [system.getParticleMass(i).value_in_unit(u.dalton) for i in range(system.getNumParticles())]
    )
    d = molecule_offsets(x, cell, masses, water_molecule_ids(data.numbers))

    def energy_ev(scale: float) -> float:
        a, b, c = (cell * scale / 10.0).tolist()
        context.setPeriodicBoxVectors(openmm.Vec3(*a), openmm.Vec3(*b), openmm.Vec3(*c))
        context.setPositions(((x - d) * scale + d) / 10.0)
        energy = context.getState(getEnergy=True).getPotentialEnergy()
        return energy.value_in_unit(u.kilojoule_per_mole) * units.kJ / units.mol

    h = 1e-4
    molecular = {"OpenMM": -(energy_ev(1 + h) - energy_ev(1 - h)) / (2 * h) / (3 * volume) / units.bar}
    atomic = {}
    for path in args.model:
        for out, molecules in ((molecular, "water"), (atomic, None)):
            atoms = Atoms(numbers=data.numbers, positions=x, cell=cell, pbc=True)
            atoms.calc = ScalepoolCalculator.from_file(path, device=args.device, float64=True, molecules=molecules)
            out[path] = float(-atoms.get_stress()[:3].mean() / units.bar)
    return molecular, atomic


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", default=[], help="model file (repeat for several)")
    parser.add_argument("--steps", type=int, default=500, help="ASE NPT steps per model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--data", default=os.path.join(os.path.dirname(__file__), "..", "data", "nacl_default.npz")
    )
    parser.add_argument("--frame", type=int, default=-1, help="start frame (default: the last)")
    parser.add_argument("--timestep", type=float, default=1.0, help="fs (ASE)")
    parser.add_argument("--temperature", type=float, default=300.0, help="K")
    parser.add_argument("--pressure", type=float, default=1.0, help="bar")
    parser.add_argument("--taut", type=float, default=100.0, help="fs, Berendsen thermostat")
    parser.add_argument("--taup", type=float, default=250.0, help="fs, Berendsen barostat")
    parser.add_argument("--compressibility", type=float, default=4.57e-5, help="1/bar (water)")
    parser.add_argument(
        "--float64", action="store_true", help="evaluate the model in float64 (default float32)"
    )
    parser.add_argument("--openmm-steps", type=int, default=5000, help="reference NPT steps (0: none)")
    parser.add_argument("--openmm-timestep", type=float, default=2.0, help="fs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace", default=None, help="CSV of every ASE step (model, step, ps, rho, P, T)")
    parser.add_argument("--out", default=None, help="CSV of the summary table (+ PATH.provenance.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from ase import units

    from scalepool._files import write_csv
    from scalepool.data import FrameSet
    from scalepool.md import water_molecule_ids

    data = FrameSet.load(args.data)
    rows, traces = [], []
    print("molecular virial pressure at the start frame (bar, no kinetic term):")
    virial, atomic = start_virial_pressures(args, data)
    for name, value in virial.items():
        print(f"  {name[-60:]:60s} {value:8.0f}")
    volume = abs(np.linalg.det(data.cell[args.frame % len(data.positions)]))
    n_molecules = int(water_molecule_ids(data.numbers).max()) + 1
    ideal_gas = n_molecules * units.kB * args.temperature / volume / units.bar
    print(f"  centre-of-mass ideal gas N k T / V at {args.temperature:.0f} K: {ideal_gas:.0f} bar", flush=True)
    print("atomic virial pressure at the start frame (bar; constraint forces left out):")
    for name, value in atomic.items():
        print(f"  {name[-60:]:60s} {value:8.0f}")
    if args.openmm_steps > 0:
        print(f"OpenMM NPT, {args.openmm_steps} steps of {args.openmm_timestep} fs", flush=True)
        stats, _ = run_openmm(args, data)
        rows.append(("OpenMM TIP3P/JC (reference)", stats))
    for path in args.model:
        print(f"ASE NPTBerendsen with {path}, {args.steps} steps of {args.timestep} fs", flush=True)
        stats, trace = run_ase(args, path, data)
        rows.append((path, stats))
        traces += [(path, *row) for row in trace]
    reference = rows[0][1]["mean"] if args.openmm_steps > 0 else float("nan")
    print(
        f"\n{len(data.numbers)} atoms, {args.temperature:.0f} K, {args.pressure:g} bar; densities in g/cm^3, "
        "statistics over the last half of each run"
    )
    header = (
        f"{'run':44s} {'steps':>6s} {'ps':>6s} {'rho_0':>7s} {'rho_mean':>8s} {'std':>6s} "
        f"{'drift/ps':>9s} {'vs start':>8s} {'vs ref':>7s} {'P bar':>7s} {'s/step':>6s}"
    )
    print(header)
    for name, s in rows:
        print(
            f"{name[-44:]:44s} {s['steps']:6d} {s['ps']:6.2f} {s['start']:7.4f} {s['mean']:8.4f} {s['std']:6.4f} "
            f"{s['drift']:+9.4f} {s['mean'] - s['start']:+8.4f} {s['mean'] - reference:+7.4f} "
            f"{s['pressure']:7.0f} {s['s_per_step']:6.3f}"
        )
    for name, s in rows:
        if s.get("failure"):
            print(f"{name}: {s['failure']}")
    if args.out:
        _write_summary(args, rows, virial, ideal_gas, reference, atomic)
    if args.trace and traces:
        columns = ["model", "step", "time_ps", "density_g_cm3", "pressure_bar", "temperature_K"]
        import pandas as pd

        write_csv(args.trace, pd.DataFrame(traces, columns=columns))


#: Columns of ``--out``.
SUMMARY_COLUMNS = (
    "run", "model", "steps", "ps", "rho_start", "rho_mean", "rho_std", "drift_per_ps", "vs_start", "vs_reference",
    "pressure_bar", "temperature_K", "start_virial_bar", "start_atomic_virial_bar", "ideal_gas_bar",
    "s_per_step", "failure",
)  # fmt: skip


def _write_summary(args, rows, virial: dict, ideal_gas: float, reference: float, atomic: dict) -> None:
    """The table as a CSV (:data:`SUMMARY_COLUMNS`) plus its provenance."""
    from pathlib import Path

    import pandas as pd

    from scalepool._files import write_csv, write_json
    from scalepool.provenance import provenance

    records = []
    for name, s in rows:
        is_reference = name not in args.model
        records.append({
            "run": "OpenMM TIP3P/JC (reference)" if is_reference else Path(name).parent.name,
            "model": "" if is_reference else name,
            "steps": s["steps"], "ps": s["ps"], "rho_start": s["start"], "rho_mean": s["mean"],
            "rho_std": s["std"], "drift_per_ps": s["drift"], "vs_start": s["mean"] - s["start"],
            "vs_reference": s["mean"] - reference, "pressure_bar": s["pressure"],
            "temperature_K": s.get("temperature", float("nan")),
            "start_virial_bar": virial["OpenMM" if is_reference else name],
            "start_atomic_virial_bar": float("nan") if is_reference else atomic[name],
            "ideal_gas_bar": ideal_gas,
            "s_per_step": s["s_per_step"], "failure": s.get("failure", ""),
        })  # fmt: skip
    write_csv(args.out, pd.DataFrame(records, columns=list(SUMMARY_COLUMNS)))
    params = {k: v for k, v in vars(args).items() if k != "out"}
    record = provenance("npt-density", params, seeds=[args.seed], inputs=[args.data, *args.model])
    write_json(Path(str(args.out) + ".provenance.json"), record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
