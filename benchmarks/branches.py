"""Throughput of the force branches: energy+forces steps on a ~1,500-atom water box.

For each branch (short: PaiNN at 4.5 Å; long: PaiNN at 6 Å plus P3M
electrostatics), batch size and aggregation path it times

- ``infer``: energy and forces in eval mode (one backward pass);
- ``train``: the same in train mode, then a force+energy loss back-propagated
  to the weights (the force graph is differentiated again),

and prints the best-of-``--repeats`` wall-clock ms per step, frames/s and
atom-steps/s (atoms times steps per second), plus the process CPU seconds of
that step (CPU time is the steadier number on a shared machine).  The neighbour
search (vesin) is part of every step.  A peer implementation (schnetpack's
PaiNN at the same width, depth and cutoff) runs when ``import schnetpack``
works; torch-scatter aggregation when ``import torch_scatter`` works.

Input: ``--dataset PATH`` (a scalepool ``.npz``; the first frames are used),
else a seeded random water-density box of O/H/Na/Cl
(:func:`scalepool.testing.water_box`, 25 Å, 1,530 atoms).

    python benchmarks/branches.py --threads 2 --repeats 3 --csv results.csv

``OMP_WAIT_POLICY=PASSIVE`` is set unless the environment already sets it:
with OpenMP's default busy waiting, two threads on a machine shared with other
jobs spun at every barrier (a 1,530-atom training step of the long branch went
from 2.1 s to 18 s of wall time).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP runtime

import argparse  # noqa: E402
import csv  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from scalepool.data import FrameSet  # noqa: E402
from scalepool.models import HAS_TORCH_SCATTER, AtomsBatch, build_branch, keep_freed_memory  # noqa: E402
from scalepool.testing import water_box  # noqa: E402


def load_frames(path: str | None, box: float, n_frames: int) -> FrameSet:
    if path is None:
        return water_box(box, seed=0, n_frames=n_frames)
    frames = FrameSet.load(path)
    if frames.n_frames < n_frames:
        raise SystemExit(f"{path} has {frames.n_frames} frames, the benchmark needs {n_frames}")
    return frames[list(range(n_frames))]


def time_step(step, repeats: int) -> tuple[float, float]:
    """Wall seconds of the fastest of ``repeats`` calls (after one warm-up) and its CPU seconds."""
    step()
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        step()
        best = min(best, (time.perf_counter() - w, time.process_time() - c))
    return best


def make_step(model: torch.nn.Module, batch: AtomsBatch, mode: str):
    def infer():
        model.eval()
        out = model(batch)
        return out["forces"].sum().item()

    def train():
        model.train()
        model.zero_grad(set_to_none=True)
        out = model(batch)
        loss = (out["forces"] ** 2).mean() + 1e-3 * (out["energy"] ** 2).mean()
        loss.backward()
        return loss.item()

    return {"infer": infer, "train": train}[mode]


def schnetpack_peer(cutoff: float, n_features: int, n_interactions: int, n_rbf: int):
    """A step function factory for schnetpack's PaiNN, or None when schnetpack is absent."""
    try:
        import schnetpack as spk  # noqa: F401
        import schnetpack.properties as props
    except ImportError:
        return None

    representation = spk.representation.PaiNN(
        n_atom_basis=n_features,
        n_interactions=n_interactions,
        radial_basis=spk.nn.BesselRBF(n_rbf=n_rbf, cutoff=cutoff),
        cutoff_fn=spk.nn.CosineCutoff(cutoff),
    )
    model = spk.model.NeuralNetworkPotential(
        representation=representation,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=n_features), spk.atomistic.Forces()],
    )

    def factory(batch: AtomsBatch, mode: str):
        def step():
            pairs, shifts = batch.neighbors(cutoff)
            inputs = {
                props.Z: batch.numbers,
                props.R: batch.positions.clone(),
                props.cell: batch.cell,
                props.pbc: torch.ones(batch.n_frames, 3, dtype=torch.bool),
                props.idx_i: pairs[:, 0],
                props.idx_j: pairs[:, 1],
                props.offsets: torch.einsum("pk,pkl->pl", shifts.to(batch.positions.dtype),
                                            batch.cell[batch.frame_index[pairs[:, 0]]]),
                props.idx_m: batch.frame_index,
                props.n_atoms: torch.bincount(batch.frame_index),
            }  # fmt: skip
            model.train(mode == "train")
            out = model(inputs)
            if mode == "train":
                (out["forces"] ** 2).mean().backward()
            return out["forces"].sum().item()

        return step

    return factory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", help="scalepool .npz dataset (default: random water box)")
    parser.add_argument("--box", type=float, default=25.0, help="edge of the random water box, Å")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--branches", nargs="+", default=["short", "long"], choices=["short", "long"])
    parser.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    parser.add_argument("--aggregations", nargs="+", default=["fused", "index_add", "torch_scatter"])
    parser.add_argument("--n-features", type=int, default=None, help="override the default width")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="do not call keep_freed_memory() (measure glibc's default allocator)",
    )
    parser.add_argument(
        "--max-plain-train-atoms",
        type=int,
        default=4000,
        help="skip training steps of the plain-ops paths above this many atoms per batch "
        "(their second backward held 24 GB at 8 x 1,530 atoms and 6 Å)",
    )
    parser.add_argument("--csv", type=Path, help="also write the table here")
    args = parser.parse_args(argv)  # fmt: skip

    torch.set_num_threads(args.threads)
    allocator = "glibc default" if args.glibc_default else f"keep_freed_memory={keep_freed_memory()}"
    frames = load_frames(args.dataset, args.box, max(args.batch_sizes))
    print(f"# {frames.n_atoms} atoms per frame, {args.threads} threads, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, allocator: {allocator}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    if not HAS_TORCH_SCATTER:
        print("# torch-scatter is not installed: its aggregation rows are skipped")
    overrides = {} if args.n_features is None else {"n_features": args.n_features}

    rows = []
    header = ("branch", "impl", "batch", "mode", "ms/step", "frames/s", "atom-steps/s", "cpu s/step")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for kind in args.branches:
        for aggregation in args.aggregations:
            if aggregation == "torch_scatter" and not HAS_TORCH_SCATTER:
                continue
            torch.manual_seed(0)
            model = build_branch(kind, aggregation=aggregation, **overrides)
            cfg = model.config
            for size in args.batch_sizes:
                batch = AtomsBatch.from_frameset(frames, indices=list(range(size)))
                for mode in args.modes:
                    if (
                        mode == "train"
                        and aggregation != "fused"
                        and batch.n_atoms > args.max_plain_train_atoms
                    ):
                        print(
                            f"# {kind} {aggregation} batch {size} train skipped: above --max-plain-train-atoms"
                        )
                        continue
                    wall, cpu = time_step(make_step(model, batch, mode), args.repeats)
                    row = (kind, f"{cfg['backbone']}-{aggregation}", size, mode, 1e3 * wall,
                           size / wall, batch.n_atoms / wall, cpu)  # fmt: skip
                    rows.append(row)
                    print(
                        "| {} | {} | {} | {} | {:.0f} | {:.2f} | {:.0f} | {:.2f} |".format(*row), flush=True
                    )
        peer = schnetpack_peer(model.cutoff, model.n_features, model.backbone.n_interactions,
                               model.backbone.n_rbf)  # fmt: skip
        if peer is None:
            if kind == args.branches[0]:
                print(
                    "# schnetpack is not installed: no peer PaiNN rows (not installed to keep torch pinned)"
                )
            continue
        for size in args.batch_sizes:
            batch = AtomsBatch.from_frameset(frames, indices=list(range(size)))
            for mode in args.modes:
                wall, cpu = time_step(peer(batch, mode), args.repeats)
                row = (
                    kind,
                    "schnetpack-painn",
                    size,
                    mode,
                    1e3 * wall,
                    size / wall,
                    batch.n_atoms / wall,
                    cpu,
                )
                rows.append(row)
                print("| {} | {} | {} | {} | {:.0f} | {:.2f} | {:.0f} | {:.2f} |".format(*row), flush=True)
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
