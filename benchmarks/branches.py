"""Throughput of the force branches: energy+forces steps on a ~1,500-atom water box.

For each branch (short: PaiNN at 4.5 Å; long: PaiNN at 6 Å plus P3M
electrostatics), batch size and aggregation path it times

- ``infer``: energy and forces in eval mode (one backward pass);
- ``train``: the same in train mode, then a force+energy loss back-propagated
  to the weights (the force graph is differentiated again),

and prints the best-of-``--repeats`` wall-clock ms per step, frames/s and
atom-steps/s (atoms times steps per second), plus the process CPU seconds of
that step (CPU time is the steadier number on a shared machine).  The neighbour
search (vesin, on the CPU) is part of every step.  torch-scatter aggregation
runs when ``import torch_scatter`` works.

Peer comparison, when ``import schnetpack`` works: schnetpack's PaiNN at the
same width, depth, radial basis size and cutoff, fed the same neighbour list
(built inside its step too), against our PaiNN backbone alone at that cutoff
(``ShortRangeBranch(cutoff=...)``: at 4.5 Å this *is* the short branch; at
6 Å it is the long branch without its P3M head, which schnetpack does not
have).  A second table prints ``peer ms / our ms``: above 1 means we are faster.

Input: ``--dataset PATH`` (a scalepool ``.npz``; the first frames are used),
else a seeded random water-density box of O/H/Na/Cl
(:func:`scalepool.testing.water_box`, 25 Å, 1,530 atoms).

    python benchmarks/branches.py --threads 2 --repeats 3 --csv results.csv

``--csv PATH`` also writes ``PATH.provenance.json`` (the settings, the commit).

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
from scalepool.train import PRECISIONS, autocast  # noqa: E402


def load_frames(path: str | None, box: float, n_frames: int) -> FrameSet:
    if path is None:
        return water_box(box, seed=0, n_frames=n_frames)
    frames = FrameSet.load(path)
    if frames.n_frames < n_frames:
        raise SystemExit(f"{path} has {frames.n_frames} frames, the benchmark needs {n_frames}")
    return frames[list(range(n_frames))]


def time_step(step, repeats: int, device: torch.device) -> tuple[float, float]:
    """Wall seconds of the fastest of ``repeats`` calls (after one warm-up) and its CPU seconds."""

    def synchronized():
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    synchronized()
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        synchronized()
        best = min(best, (time.perf_counter() - w, time.process_time() - c))
    return best


def make_step(model: torch.nn.Module, batch: AtomsBatch, mode: str, precision: str = "float32"):
    """One timed step; ``precision`` as ``scalepool train --precision`` (forward under autocast)."""

    def infer():
        model.eval()
        with autocast(precision, batch.device):
            out = model(batch)
        return out["forces"].sum().item()

    def train():
        model.train()
        model.zero_grad(set_to_none=True)
        with autocast(precision, batch.device):
            out = model(batch)
        loss = (out["forces"] ** 2).mean() + 1e-3 * (out["energy"] ** 2).mean()
        loss.backward()
        return loss.item()

    return {"infer": infer, "train": train}[mode]


def schnetpack_peer(cutoff: float, n_features: int, n_interactions: int, n_rbf: int, device: torch.device):
    """A step function factory for schnetpack's PaiNN, or None when schnetpack is absent."""
    import typing

    import torch.utils.data.dataloader as loader

    if not hasattr(loader, "T_co"):  # schnetpack 2.1.1 imports this private name, gone in newer torch
        loader.T_co = typing.TypeVar("T_co", covariant=True)
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
        output_modules=[
            spk.atomistic.Atomwise(n_in=n_features, output_key="energy"),
            spk.atomistic.Forces(energy_key="energy", force_key="forces"),
        ],
    ).to(device)

    def factory(batch: AtomsBatch, mode: str):
        def step():
            pairs, shifts = batch.neighbors(cutoff)
            inputs = {
                props.Z: batch.numbers,
                props.R: batch.positions.clone(),
                props.cell: batch.cell,
                props.pbc: torch.ones(batch.n_frames, 3, dtype=torch.bool, device=batch.device),
                props.idx_i: pairs[:, 0],
                props.idx_j: pairs[:, 1],
                props.offsets: torch.einsum("pk,pkl->pl", shifts.to(batch.positions.dtype),
                                            batch.cell[batch.frame_index[pairs[:, 0]]]),
                props.idx_m: batch.frame_index,
                props.n_atoms: torch.bincount(batch.frame_index),
            }  # fmt: skip
            model.train(mode == "train")
            model.zero_grad(set_to_none=True)
            out = model(inputs)
            if mode == "train":  # the same loss as make_step's
                ((out["forces"] ** 2).mean() + 1e-3 * (out["energy"] ** 2).mean()).backward()
            return out["forces"].sum().item()

        return step

    factory.model = model
    return factory


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _print_row(row) -> None:
    print("| {} | {} | {} | {} | {:.0f} | {:.2f} | {:.0f} | {:.2f} |".format(*row), flush=True)


def peer_comparison(args, frames: FrameSet, overrides: dict, device: torch.device) -> list[tuple]:
    """Our PaiNN backbone and schnetpack's at each branch's cutoff; prints the peer/our ratio."""
    rows, ratios = [], []
    for kind in args.branches:
        torch.manual_seed(0)
        reference = build_branch(kind, **overrides).backbone.config  # width, depth, basis of this branch
        cfg = {key: reference[key] for key in ("cutoff", "n_features", "n_interactions", "n_rbf", "radial_basis")}
        ours = build_branch("short", **cfg).to(device)
        peer = schnetpack_peer(ours.cutoff, cfg["n_features"], cfg["n_interactions"], cfg["n_rbf"], device)
        if peer is None:
            print("# schnetpack is not installed: no peer rows (pip install schnetpack, with torch pinned)")
            return rows
        label = f"painn {ours.cutoff:g} A"
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        print(f"# {label}: {cfg['n_features']} features, {cfg['n_interactions']} interactions, "
              f"{cfg['n_rbf']} radial functions; parameters scalepool {count(ours):,}, "
              f"schnetpack {count(peer.model):,}")  # fmt: skip
        for size in args.batch_sizes:
            batch = AtomsBatch.from_frameset(frames, indices=list(range(size))).to(device)
            n_edges = batch.neighbors(ours.cutoff)[0].shape[0]
            for mode in args.modes:
                if n_edges > args.max_peer_edges:
                    print(f"# {label} batch {size} {mode}: {n_edges:,} edges, above --max-peer-edges; skipped")
                    continue
                timed = {}
                steps = (("scalepool", make_step(ours, batch, mode, args.precision)), ("schnetpack", peer(batch, mode)))
                for impl, step in steps:
                    wall, cpu = time_step(step, args.repeats, device)
                    timed[impl] = wall
                    row = (label, impl, size, mode, 1e3 * wall, size / wall, batch.n_atoms / wall, cpu)
                    rows.append(row)
                    _print_row(row)
                ratios.append((label, size, mode, timed["schnetpack"] / timed["scalepool"]))
    print("\n| model | batch | mode | schnetpack ms / scalepool ms |\n|---|---|---|---|")
    for label, size, mode, ratio in ratios:
        print(f"| {label} | {size} | {mode} | {ratio:.2f} |")
    return rows


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
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="float32",
        help="model forward precision of our rows (fp16-mixed: CUDA only); the schnetpack peer stays float32",
    )  # fmt: skip
    parser.add_argument("--no-peer", action="store_true", help="skip the schnetpack comparison")
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
    parser.add_argument(
        "--max-peer-edges",
        type=int,
        default=800_000,
        help="skip schnetpack steps above this many directed edges per batch (at 6 Å and "
        "8 x 1,467 atoms, about 1.1 M edges, its inference step was killed for memory at 24 GB)",
    )
    parser.add_argument("--csv", type=Path, help="also write the table here")
    args = parser.parse_args(argv)  # fmt: skip

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available in this torch build")
    allocator = "glibc default" if args.glibc_default else f"keep_freed_memory={keep_freed_memory()}"
    frames = load_frames(args.dataset, args.box, max(args.batch_sizes))
    print(f"# {frames.n_atoms} atoms per frame, {args.threads} threads, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, device {_device_name(device)}, allocator: {allocator}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load average {os.getloadavg()[0]:.1f}, "
          f"precision {args.precision}")  # fmt: skip
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
            model = build_branch(kind, aggregation=aggregation, **overrides).to(device)
            cfg = model.config
            for size in args.batch_sizes:
                batch = AtomsBatch.from_frameset(frames, indices=list(range(size))).to(device)
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
                    wall, cpu = time_step(make_step(model, batch, mode, args.precision), args.repeats, device)
                    row = (kind, f"{cfg['backbone']}-{aggregation}", size, mode, 1e3 * wall,
                           size / wall, batch.n_atoms / wall, cpu)  # fmt: skip
                    rows.append(row)
                    _print_row(row)
    if not args.no_peer:
        rows += peer_comparison(args, frames, overrides, device)
    if args.csv:
        from scalepool._files import write_json
        from scalepool.provenance import provenance

        with open(args.csv, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
        params = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "csv"}
        write_json(Path(str(args.csv) + ".provenance.json"), provenance("branches-benchmark", params))
    return 0


if __name__ == "__main__":
    sys.exit(main())
