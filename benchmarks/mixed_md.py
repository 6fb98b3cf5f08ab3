"""NVE energy drift and step time of a router-mixed short/long model.

Loads two trained branches, fits the smooth router of a
:class:`~scalepool.scales.MixedForceModel` on the train split of their
prediction cache, then runs velocity-Verlet NVE from a test frame with
:class:`~scalepool.scales.ScalepoolCalculator` and prints

- the router's train force MAE (soft, hard, each branch alone), eV/Å;
- the total-energy drift: slope of a linear fit of E_tot(t), eV/atom/ps, and
  the largest excursion |E_tot - E_tot(0)|, eV/atom;
- wall-clock seconds per MD step.

    python benchmarks/mixed_md.py --short runs/testbed/short/best.pt \\
        --long runs/testbed/long/best.pt --pred runs/testbed/pred_short_long.npz \\
        --data data/nacl_default.npz --steps 200 --timestep 0.5
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", required=True, help="model file of the s=0 branch")
    parser.add_argument("--long", required=True, help="model file of the s=1 branch")
    parser.add_argument("--pred", required=True, help="prediction cache (.npz) of the two branches")
    parser.add_argument("--data", default=None, help="dataset .npz (checks the species of the cache)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--temperature", type=float, default=300.0, help="K, initial Maxwell-Boltzmann")
    parser.add_argument("--frame", type=int, default=0, help="index among the test frames")
    parser.add_argument("--router-steps", type=int, default=300)
    parser.add_argument("--float32", action="store_true", help="run MD in float32 (default float64)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--save", default=None, help="write the fitted mixed model here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace", default=None, help="write step, time, E_pot, E_kin, E_tot, T per step to this CSV")
    parser.add_argument(
        "--flexible-water",
        action="store_true",
        help="no water constraints (default: rigid O-H and H-H lengths, as in the rigid-water training data)",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    from ase import Atoms, units
    from ase.md.verlet import VelocityVerlet

    from scalepool.data import PredictionCache
    from scalepool.md import RigidBonds, ScalepoolCalculator, rigid_water_pairs
    from scalepool.models import MixedForceModel, load_model, save_model
    from scalepool.scales import fit_router

    cache = PredictionCache.load(args.pred)
    if args.data is not None:
        from scalepool.data import FrameSet

        data = FrameSet.load(args.data)
        if not np.array_equal(data.numbers, cache.numbers):
            raise SystemExit(f"{args.data} and {args.pred} hold different atoms")
    short, long = load_model(args.short), load_model(args.long)
    species = tuple(sorted(set(cache.numbers.tolist())))
    model = MixedForceModel(short, long, species=species).to(device=args.device)

    t0 = time.perf_counter()
    metrics = fit_router(model, cache.select("train"), steps=args.router_steps, seed=args.seed)
    print(f"router fit {time.perf_counter() - t0:.1f} s on {len(cache.frames('train'))} train frames")
    for key, value in metrics.items():
        print(f"  {key:12s} {value:.4f}")
    if args.save:
        save_model(model, args.save)

    test = cache.frames("test")
    frame = int(test[args.frame])
    pbc = cache.cell is not None
    atoms = Atoms(
        numbers=cache.numbers,
        positions=cache.positions[frame],
        cell=cache.cell[frame] if pbc else None,
        pbc=pbc,
    )
    if not args.flexible_water:
        # The reference forces are rigid TIP3P: the models never saw a stretched
        # O-H bond, so unconstrained MD heats up within femtoseconds.
        atoms.set_constraint(RigidBonds(rigid_water_pairs(atoms.numbers), tolerance=1e-10))
    atoms.calc = ScalepoolCalculator(model, float64=not args.float32, device=args.device)
    rng = np.random.default_rng(args.seed)
    masses = atoms.get_masses()[:, None]
    atoms.set_momenta(rng.normal(size=(len(atoms), 3)) * np.sqrt(masses * units.kB * args.temperature))
    atoms.set_momenta(atoms.get_momenta() - atoms.get_momenta().mean(axis=0))  # no centre-of-mass drift

    dyn = VelocityVerlet(atoms, timestep=args.timestep * units.fs)
    n = len(atoms)
    trace = []

    def record(step: int) -> float:
        potential, kinetic = atoms.get_potential_energy(), atoms.get_kinetic_energy()
        trace.append((step, step * args.timestep, potential, kinetic, potential + kinetic, atoms.get_temperature()))
        return potential + kinetic

    totals = [record(0)]
    t0 = time.perf_counter()
    for step in range(args.steps):
        dyn.run(1)
        totals.append(record(step + 1))
        if (step + 1) % max(1, args.steps // 10) == 0:
            print(f"  step {step + 1:5d}  E_tot {totals[-1]:.6f} eV  T {atoms.get_temperature():.1f} K", flush=True)
    per_step = (time.perf_counter() - t0) / max(args.steps, 1)
    if args.trace:
        import pandas as pd

        columns = ["step", "time_fs", "e_pot_eV", "e_kin_eV", "e_tot_eV", "temperature_K"]
        pd.DataFrame(trace, columns=columns).to_csv(args.trace, index=False)
    totals = np.asarray(totals) / n
    time_ps = np.arange(len(totals)) * args.timestep * 1e-3
    slope = np.polyfit(time_ps, totals, 1)[0] if len(totals) > 1 else float("nan")
    print(f"test frame {frame}, {n} atoms, {args.steps} steps of {args.timestep} fs "
          f"({'float32' if args.float32 else 'float64'})")
    print(f"energy drift      {slope:.3e} eV/atom/ps (linear fit)")
    print(f"max |dE_tot|      {np.abs(totals - totals[0]).max():.3e} eV/atom")
    print(f"time per step     {per_step:.3f} s")


if __name__ == "__main__":
    main()
