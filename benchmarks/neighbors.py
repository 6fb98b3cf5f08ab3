"""Timings of neighbour lists and the nearest-ion descriptor at water density.

Compares, for ~1,500 and ~2,000 atoms in a cubic and a triclinic box of equal
volume, at 5 and 6 Å:

- ``scalepool.neighbors.neighbor_pairs`` (vesin), full and half lists;
- what ``AtomsBatch.neighbors`` paid per call before (positions copied to the
  host, numpy vesin, pairs copied back to ``--device``) and pays now
  (``torch_batched_neighbor_pairs``: vesin-torch on ``--device``, no copy);
- the same pairs and shifts followed by ``pair_vectors`` in torch, forward and
  backward (sum of distances, float32), i.e. what a model pays per step;
- MDAnalysis ``FastNS`` self-search (float32, minimum image, pairs once);
- ASE ``neighbor_list('ijS')`` at the smallest size only (it is slow);
- ``nearest_ion_distance`` for one frame and ``frameset_descriptors`` per frame
  (cutoff independent; the Minkowski-reduced cell is reused across frames).

Positions are uniformly random (water density, 0.1003 atoms/Å^3), so pair
counts match a liquid on average.  Each entry is the median (and minimum) wall
time of ``--repeats`` calls after one warm-up call.

Usage: ``python benchmarks/neighbors.py --repeats 7 [--device cuda] [--only-lists] [--csv results.csv]``
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from ase.neighborlist import primitive_neighbor_list
from MDAnalysis.lib.mdamath import triclinic_vectors
from MDAnalysis.lib.nsgrid import FastNS

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from scalepool.data import (  # noqa: E402
    FrameSet,  # noqa: E402
    frameset_descriptors,
    nearest_ion_distance,
)
from scalepool.neighbors import (  # noqa: E402
    batched_neighbor_pairs,
    neighbor_pairs,
    pair_vectors,
    torch_batched_neighbor_pairs,
)
from scalepool.units import CHLORINE, HYDROGEN, OXYGEN, SODIUM  # noqa: E402

#: Atoms per Å^3 in liquid water at 1 g/cm^3 (33.4 molecules per nm^3).
WATER_ATOM_DENSITY = 0.1003
#: Triclinic test box: lengths equal, angles in degrees (volume rescaled).
TRICLINIC_ANGLES = (75.0, 85.0, 70.0)


def make_system(n_atoms: int, kind: str, rng: np.random.Generator):
    """Random positions (n_atoms, 3) Å, numbers (n_atoms,), cell (3, 3) Å and MDAnalysis box (6,)."""
    volume = n_atoms / WATER_ATOM_DENSITY
    angles = (90.0, 90.0, 90.0) if kind == "cubic" else TRICLINIC_ANGLES
    unit = triclinic_vectors(np.array([1.0, 1.0, 1.0, *angles])).astype(np.float64)
    length = (volume / abs(np.linalg.det(unit))) ** (1.0 / 3.0)
    cell = unit * length
    dims = np.array([length, length, length, *angles], dtype=np.float32)
    positions = rng.uniform(0.0, 1.0, (n_atoms, 3)) @ cell
    numbers = np.array([OXYGEN, HYDROGEN, HYDROGEN] * (n_atoms // 3 + 1))[:n_atoms]
    n_ions = 2 * round(n_atoms * 9 / 1467)  # 1 M NaCl as in the OpenMM testbed
    numbers[rng.choice(n_atoms, n_ions, replace=False)] = [SODIUM, CHLORINE] * (n_ions // 2)
    return positions, numbers, cell, dims


def timed(function, repeats: int) -> tuple[float, float, object]:
    """(median ms, min ms, last result) of ``repeats`` calls after a warm-up."""
    result = function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times), min(times), result


def torch_forward_backward(positions, cell, cutoff):
    pairs, shifts = neighbor_pairs(positions, cutoff, cell, full_list=False)
    x = torch.tensor(positions, dtype=torch.float32, requires_grad=True)
    h = torch.tensor(cell, dtype=torch.float32, requires_grad=True)
    distances = pair_vectors(x, torch.from_numpy(pairs), torch.from_numpy(shifts), h).norm(dim=1)
    distances.sum().backward()
    return len(pairs)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_round_trip_pairs(positions: torch.Tensor, cell: torch.Tensor, frame_index: torch.Tensor, cutoff):
    """The former ``AtomsBatch.neighbors``: copy to the host, numpy vesin, copy the pairs back."""
    pairs, shifts = batched_neighbor_pairs(
        positions.detach().cpu().double().numpy(),
        cutoff,
        cell.detach().cpu().double().numpy(),
        frame_index.cpu().numpy(),
    )
    pairs = torch.as_tensor(pairs, device=positions.device)
    shifts = torch.as_tensor(shifts, device=positions.device)
    synchronize(positions.device)
    return len(pairs)


def on_device_pairs(positions: torch.Tensor, cell: torch.Tensor, frame_index: torch.Tensor, cutoff):
    """``AtomsBatch.neighbors`` now: vesin-torch on the positions' device."""
    pairs, _ = torch_batched_neighbor_pairs(positions, cutoff, cell, frame_index, n_frames=1)
    synchronize(positions.device)
    return pairs.shape[0]


def fastns(positions, dims, cutoff):
    search = FastNS(cutoff, positions.astype(np.float32), box=dims, pbc=True).self_search()
    return len(search.get_pairs())


def ase_pairs(positions, cell, cutoff):
    i, _, _ = primitive_neighbor_list("ijS", [True, True, True], cell, positions, cutoff)
    return len(i)


def descriptor_frames(positions, numbers, cell, n_frames, rng):
    """A FrameSet of ``n_frames`` random frames sharing ``numbers`` and ``cell``."""
    stack = rng.uniform(0.0, 1.0, (n_frames, *positions.shape)) @ cell
    return FrameSet(positions=stack, forces=np.zeros(stack.shape, np.float32), numbers=numbers, cell=cell)


def run(args) -> list[dict]:
    rng = np.random.default_rng(args.seed)
    rows = []
    header = (
        f"{'atoms':>6} {'cell':>9} {'rc/Å':>5}  {'method':<38} {'pairs':>7} {'median ms':>9} {'min ms':>8}"
    )
    print(
        f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}, "
        f"repeats {args.repeats}\n{header}"
    )
    for n_atoms in args.sizes:
        for kind in ("cubic", "triclinic"):
            positions, numbers, cell, dims = make_system(n_atoms, kind, rng)
            n_ions = int(np.isin(numbers, (SODIUM, CHLORINE)).sum())
            cases = []  # (cutoff, method, repeats, function returning a pair count, calls per timing)
            device = torch.device(args.device)
            x = torch.tensor(positions, dtype=torch.float32, device=device)
            h = torch.tensor(cell, dtype=torch.float32, device=device)[None]
            frame_index = torch.zeros(n_atoms, dtype=torch.long, device=device)
            for cutoff in args.cutoffs:
                cases += [
                    (
                        cutoff,
                        f"before: host copy + vesin ({device.type})",
                        args.repeats,
                        partial(host_round_trip_pairs, x, h, frame_index, cutoff),
                        1,
                    ),
                    (
                        cutoff,
                        f"now: vesin-torch on {device.type}",
                        args.repeats,
                        partial(on_device_pairs, x, h, frame_index, cutoff),
                        1,
                    ),
                ]
                if args.only_lists:
                    continue
                cases += [
                    (
                        cutoff,
                        "vesin full list (neighbor_pairs)",
                        args.repeats,
                        partial(lambda *a: len(neighbor_pairs(*a)[0]), positions, cutoff, cell),
                        1,
                    ),
                    (
                        cutoff,
                        "vesin half list",
                        args.repeats,
                        partial(
                            lambda *a: len(neighbor_pairs(*a, full_list=False)[0]), positions, cutoff, cell
                        ),
                        1,
                    ),
                    (
                        cutoff,
                        "vesin half + torch dist fwd+bwd",
                        args.repeats,
                        partial(torch_forward_backward, positions, cell, cutoff),
                        1,
                    ),
                    (
                        cutoff,
                        "MDAnalysis FastNS (float32)",
                        args.repeats,
                        partial(fastns, positions, dims, cutoff),
                        1,
                    ),
                ]
                if n_atoms == min(args.sizes) and not args.skip_ase:
                    cases.append(
                        (
                            cutoff,
                            "ASE neighbor_list ijS (full)",
                            max(1, args.repeats // 3),
                            partial(ase_pairs, positions, cell, cutoff),
                            1,
                        )
                    )
            if not args.only_lists:
                cases.append(
                    (
                        None,
                        f"nearest_ion_distance ({n_ions} ions)",
                        args.repeats,
                        partial(nearest_ion_distance, positions, numbers, cell),
                        1,
                    )
                )
                frames = descriptor_frames(positions, numbers, cell, args.frames, rng)
                cases.append(
                    (
                        None,
                        "frameset_descriptors, per frame",
                        max(1, args.repeats // 3),
                        partial(frameset_descriptors, frames),
                        args.frames,
                    )
                )
            for cutoff, method, repeats, function, calls in cases:
                median, best, result = timed(function, repeats)
                pairs = result if isinstance(result, int) else None
                row = dict(
                    atoms=n_atoms,
                    cell=kind,
                    cutoff=cutoff,
                    method=method,
                    pairs=pairs,
                    median_ms=median / calls,
                    min_ms=best / calls,
                )
                rows.append(row)
                print(
                    f"{n_atoms:>6} {kind:>9} {'-' if cutoff is None else cutoff:>5}  {method:<38} "
                    f"{'-' if pairs is None else pairs:>7} {row['median_ms']:>9.2f} {row['min_ms']:>8.2f}",
                    flush=True,
                )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per entry (median reported)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1500, 2000], help="atom counts")
    parser.add_argument("--cutoffs", type=float, nargs="+", default=[5.0, 6.0], help="cutoffs in Å")
    parser.add_argument("--frames", type=int, default=50, help="frames for frameset_descriptors")
    parser.add_argument("--skip-ase", action="store_true", help="leave out ASE (about 1 s per call)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device of the batch (cpu, cuda, ...)")
    parser.add_argument(
        "--only-lists", action="store_true", help="time only the per-step neighbour lists (before/now)"
    )
    parser.add_argument("--csv", type=Path, default=None, help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = run(args)
    if args.csv is not None:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.csv}")


if __name__ == "__main__":
    main()
