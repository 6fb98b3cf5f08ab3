"""Cost of the MuSE hierarchy: frames/s of a pooled model against its bare backbone, by system size.

A ~1,500-atom water/NaCl box (``scalepool.testing.water_box``, 25 Å, or the
first frame of ``--data``) is replicated 1x1x1, 2x1x1, 2x2x1 and 2x2x2 (up to
~12,000 atoms); each size is evaluated (energy and forces, eval mode) by the
short branch alone and by the same branch wrapped in MuSE.  The table gives
seconds per frame, frames/s, the MuSE/backbone ratio and the time per atom,
whose growth with size shows whether the coarse level stays linear.

    python benchmarks/muse.py                      # 1 thread, 3 repeats
    python benchmarks/muse.py --data data/nacl.npz --sizes 1x1x1,2x2x2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch

from scalepool.data import FrameSet
from scalepool.models import AtomsBatch, build_branch, build_muse_branch, keep_freed_memory
from scalepool.testing import water_box


def replicate(positions: np.ndarray, numbers: np.ndarray, cell: np.ndarray, reps: tuple[int, int, int]):
    """Tile one periodic frame ``reps`` times along its cell vectors.

    positions : (N, 3) Å; numbers : (N,); cell : (3, 3) Å rows.
    Returns positions (N * prod(reps), 3), numbers, cell (3, 3) with rows scaled by ``reps``.
    """
    shifts = np.array([[i, j, k] for i in range(reps[0]) for j in range(reps[1]) for k in range(reps[2])])
    tiled = (positions[None] + (shifts @ cell)[:, None]).reshape(-1, 3)
    return tiled, np.tile(numbers, len(shifts)), cell * np.array(reps)[:, None]


def _batch(positions, numbers, cell, dtype) -> AtomsBatch:
    n = len(numbers)
    return AtomsBatch(
        positions=torch.as_tensor(positions, dtype=dtype),
        numbers=torch.as_tensor(numbers, dtype=torch.long),
        frame_index=torch.zeros(n, dtype=torch.long),
        cell=torch.as_tensor(cell, dtype=dtype)[None],
        n_frames=1,
    )


def time_model(model, batch: AtomsBatch, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of one energy+forces evaluation (after one warm-up).

    With one thread the CPU time of the process is what the evaluation costs
    even when other jobs share the cores (wall time then includes waiting).
    """
    wall, cpu = [], []
    for r in range(repeats + 1):
        w0, c0 = time.perf_counter(), time.process_time()
        out = model(batch)
        out["forces"].sum().item()
        if r:
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="dataset .npz whose first frame is the base box")
    parser.add_argument("--sizes", default="1x1x1,2x1x1,2x2x1,2x2x2", help="replications, comma separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed evaluations per size (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: shared machine)")
    parser.add_argument("--backbone", choices=["painn", "schnet"], default="painn")
    parser.add_argument("--coarse-cutoff", type=float, default=9.0, help="Å, MuSE level-1 message range")
    parser.add_argument("--n-levels", type=int, default=1)
    parser.add_argument("--coarse-features", type=int, default=None, help="node width (default: backbone's)")
    parser.add_argument("--coarse-interactions", type=int, default=2, help="message blocks per level")
    parser.add_argument("--float64", action="store_true", help="evaluate in float64 (default float32)")
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="time the table reports: wall, or process CPU time (robust on a shared machine, 1 thread)",
    )
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    dtype = torch.float64 if args.float64 else torch.float32

    if args.data:
        frames = FrameSet.load(args.data)
        base = (frames.positions[0], frames.numbers, frames.cell[0])
    else:
        box = water_box(box=25.0, n_ion_pairs=9, seed=0)
        base = (box.positions[0], box.numbers, box.cell[0])
    torch.manual_seed(0)
    bare = build_branch("short", backbone=args.backbone).to(dtype).eval()
    muse = build_muse_branch(
        backbone=args.backbone,
        coarse_cutoff=args.coarse_cutoff,
        n_levels=args.n_levels,
        n_coarse_features=args.coarse_features,
        n_coarse_interactions=args.coarse_interactions,
    )
    muse.backbone.load_state_dict(bare.state_dict())  # same backbone weights in both
    muse = muse.to(dtype).eval()

    rows = []
    for text in args.sizes.split(","):
        reps = tuple(int(v) for v in text.lower().split("x"))
        batch = _batch(*replicate(*base, reps), dtype)
        with torch.no_grad():
            nodes = muse.assignments(batch)[0]
        wall_bare, cpu_bare = time_model(bare, batch, args.repeats)
        wall_muse, cpu_muse = time_model(muse, batch, args.repeats)
        t_bare, t_muse = (cpu_bare, cpu_muse) if args.clock == "cpu" else (wall_bare, wall_muse)
        rows.append(
            {
                "replication": text,
                "n_atoms": batch.n_atoms,
                "n_nodes": nodes.n_nodes,
                "bare_wall_s": wall_bare,
                "muse_wall_s": wall_muse,
                "bare_cpu_s": cpu_bare,
                "muse_cpu_s": cpu_muse,
                "bare_s": t_bare,
                "muse_s": t_muse,
                "bare_frames_per_s": 1.0 / t_bare,
                "muse_frames_per_s": 1.0 / t_muse,
                "ratio": t_muse / t_bare,
                "bare_us_per_atom": 1e6 * t_bare / batch.n_atoms,
                "muse_us_per_atom": 1e6 * t_muse / batch.n_atoms,
            }
        )
        print(f"  {text}: {batch.n_atoms} atoms done", file=sys.stderr, flush=True)
    first = rows[0]
    for row in rows:
        row["bare_per_atom_growth"] = row["bare_us_per_atom"] / first["bare_us_per_atom"]
        row["muse_per_atom_growth"] = row["muse_us_per_atom"] / first["muse_us_per_atom"]

    print(
        f"MuSE ({args.n_levels} level(s), {args.coarse_cutoff} Å, {muse.config['n_coarse_features']} node "
        f"features, {args.coarse_interactions} block(s)) vs bare short branch ({args.backbone}, "
        f"{bare.n_features} features, {bare.cutoff} Å), energy+forces, {args.threads} thread(s), {dtype}, "
        f"median {args.clock} time of {args.repeats}"
    )
    header = (
        f"{'size':>7} {'atoms':>6} {'nodes':>6} {'bare s':>8} {'muse s':>8} {'bare f/s':>9} "
        f"{'muse f/s':>9} {'ratio':>6} {'bare us/at':>10} {'muse us/at':>10} {'growth b/m':>11} {'cpu ratio':>9}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['replication']:>7} {r['n_atoms']:>6} {r['n_nodes']:>6} {r['bare_s']:>8.3f} {r['muse_s']:>8.3f} "
            f"{r['bare_frames_per_s']:>9.3f} {r['muse_frames_per_s']:>9.3f} {r['ratio']:>6.2f} "
            f"{r['bare_us_per_atom']:>10.1f} {r['muse_us_per_atom']:>10.1f} "
            f"{r['bare_per_atom_growth']:>5.2f}/{r['muse_per_atom_growth']:<5.2f} "
            f"{r['muse_cpu_s'] / r['bare_cpu_s']:>9.2f}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"settings": vars(args), "rows": rows, "torch": torch.__version__}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
