"""Where is mixed precision safe?  Energy and force errors of float32 and bf16/fp16-mixed against float64.

For each branch (short, long, MuSE) the same weights run on one frame in
float64 (the reference), float32, and under ``--mixed`` (``bf16-mixed``; add
``fp16-mixed`` on CUDA) through :func:`scalepool.train.autocast`, and the
table gives, per precision: the frame-energy error (meV/atom), the RMS and
largest force-component error (meV/Å), the RMS error relative to the RMS
reference force, and (with ``--runs``) the model's own force MAE against the
labels, to put the round-off beside the model error.

Models: ``--runs DIR...`` (run folders of ``scalepool train``: their
``best.pt``), else the catalogue's branches at their default widths with a
seeded random initialisation and species statistics fitted on the dataset
(realistic energy shifts, which is what makes the per-frame sum delicate).

    python benchmarks/precision.py --data data/nacl_default.npz --frame 0
    python benchmarks/precision.py --data /tmp/spq/demo/data/nacl.npz \\
        --runs /tmp/spq/demo/runs/seed0/short /tmp/spq/demo/runs/seed0/long /tmp/spq/demo/runs/seed0/muse
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP runtime

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from scalepool.data import FrameSet  # noqa: E402
from scalepool.models import BRANCHES, AtomsBatch, build_branch, fit_species_statistics, load_model  # noqa: E402
from scalepool.train import PRECISIONS, autocast, resolve_device  # noqa: E402
from scalepool.units import EV_TO_MEV  # noqa: E402


def run_model(model, frames, frame, device, dtype, precision):
    """(energy eV float64, forces (n, 3) eV/Å float64) of one frame."""
    model = model.to(device=device, dtype=dtype).eval()
    batch = AtomsBatch.from_frameset(frames, [frame], device, dtype)
    with torch.enable_grad(), autocast(precision, device):
        out = model(batch)
    return float(out["energy"].detach().double().sum()), out["forces"].detach().double().cpu().numpy()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[1] / "data/nacl_default.npz"
    )
    parser.add_argument("--frame", type=int, default=0)
    parser.add_argument("--runs", type=Path, nargs="*", default=None, help="run folders (best.pt is used)")
    parser.add_argument("--mixed", nargs="+", default=["bf16-mixed"], choices=PRECISIONS[1:])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table as markdown here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    frames = FrameSet.load(args.data)
    if not 0 <= args.frame < frames.n_frames:
        raise SystemExit(f"--frame {args.frame}: {args.data} has {frames.n_frames} frames")
    n_atoms = int(frames.atom_counts[args.frame])
    if args.runs:
        models = {run.name: load_model(run / "best.pt") for run in args.runs}
    else:
        models = {}
        for name in BRANCHES:
            torch.manual_seed(args.seed)
            models[name] = build_branch(name)
            fit_species_statistics(models[name], frames[list(range(min(10, frames.n_frames)))])
    ref_forces = (
        frames.forces_flat[frames.atom_index([args.frame])] if frames.ragged else frames.forces[args.frame]
    )
    print(f"{args.data.name} frame {args.frame} ({n_atoms} atoms), device {device}; errors against float64")
    header = (
        f"{'model':8s} {'precision':11s} {'dE meV/atom':>12s} {'F rms meV/Å':>12s} {'F max meV/Å':>12s}"
        f" {'F rel rms':>10s} {'|F| rms eV/Å':>13s} {'model MAE meV/Å':>16s}"
    )
    print(header)
    rows = []
    for name, model in models.items():
        e64, f64 = run_model(model, frames, args.frame, device, torch.float64, "float32")
        scale = float(np.sqrt(np.mean(f64**2)))
        mae = float(np.abs(f64 - ref_forces).mean() * EV_TO_MEV)
        for precision in ["float32", *args.mixed]:
            e, f = run_model(model, frames, args.frame, device, torch.float32, precision)
            err = f - f64
            rms = float(np.sqrt(np.mean(err**2)))
            row = (
                abs(e - e64) / n_atoms * EV_TO_MEV,
                rms * EV_TO_MEV,
                np.abs(err).max() * EV_TO_MEV,
                rms / scale,
            )
            rows.append(
                f"| {name} | {precision} | {row[0]:.4f} | {row[1]:.4f} | {row[2]:.3f} | {row[3]:.1e} | {mae:.1f} |"
            )
            print(
                f"{name:8s} {precision:11s} {row[0]:12.4f} {row[1]:12.4f}"
                f" {row[2]:12.4f} {row[3]:10.2e} {scale:13.3f} {mae:16.1f}"
            )
    if args.markdown is not None:
        from scalepool._files import write_text

        lines = [
            f"{args.data.name}, frame {args.frame} ({n_atoms} atoms), device {device}; errors against float64 "
            "(same weights); model MAE: the float64 model's force MAE against the frame's labels.",
            "",
            "| model | precision | dE meV/atom | F RMS meV/Å | F max meV/Å | F RMS / RMS force | model MAE meV/Å |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
            *rows,
        ]
        write_text(args.markdown, "\n".join(lines) + "\n")
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
