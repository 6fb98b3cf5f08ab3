"""``scalepool export``: a model file as ONE torch.export archive that runs with plain torch.

The archive's program: ``forward(positions (N,3) Å, numbers (N,) int64, cell (3,3) Å,
pbc (3,) bool) -> (energy () eV, forces (N,3) eV/Å)``; load it with
``torch.export.load(path).module()`` in any Python with torch (no scalepool).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def register(commands) -> None:
    export = commands.add_parser(
        "export",
        help="write a model as one torch.export file (energy + forces, neighbour list inside) for plain torch",
        description="Trace a model file (a run's best.pt, a mixed model of 'scalepool mix') with its "
        "neighbour list, energy and autograd forces into ONE torch.export archive. Load it without "
        "scalepool: program = torch.export.load(OUT).module(); energy, forces = program(positions (N,3) Å, "
        "numbers (N,) int64, cell (3,3) Å, pbc (3,) bool), energy in eV, forces in eV/Å. The atom count is "
        "free; the P3M mesh of an electrostatics head is fixed by the example frame's cell (the program "
        "refuses a cell that needs another mesh), and the cell must be at least the model's largest "
        "neighbour cutoff between opposite faces. The export is checked against the model on the example "
        "frame before it is written.",
    )
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=Path, help="model file (scalepool.models.save_model)")
    which.add_argument("--run", type=Path, help="run directory of scalepool train (its best.pt)")
    export.add_argument(
        "--out", required=True, type=Path, help="archive to write (e.g. model.pt2), atomically"
    )
    export.add_argument(
        "--data", type=Path, default=None,
        help="dataset with the example frame (default: the dataset recorded in the run's config.json)",
    )  # fmt: skip
    export.add_argument("--frame", type=int, default=0, help="example frame of --data (default 0)")
    export.add_argument("--float64", action="store_true", help="export in float64 (default float32)")
    export.add_argument(
        "--device", default="cpu", help="cpu or cuda[:i], where the program runs (default cpu)"
    )
    export.set_defaults(func=_export)


def _example_data(args) -> Path:
    if args.data is not None:
        return args.data
    from ..train import read_run_config

    run = args.run if args.run is not None else args.model.parent
    try:
        path = read_run_config(run)["dataset"]["path"]
    except (FileNotFoundError, KeyError, TypeError, ValueError):  # not a run, or no dataset recorded
        path = None
    if not path:
        raise ValueError(f"no dataset recorded for {run}: give an example frame with --data")
    return Path(path)


def _export(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..data import FrameSet
    from ..export import export_model, load_exported, metadata, reference_energy_forces, save_exported
    from ..models import load_model
    from ..train import resolve_device

    resolve_device(args.device)
    path = args.run / "best.pt" if args.run is not None else args.model
    model = load_model(path)
    dtype = torch.float64 if args.float64 else torch.float32
    model = model.to(device=args.device, dtype=dtype).eval()
    data = _example_data(args)
    frames = FrameSet.load(data, check_physics=False)
    if not -frames.n_frames <= args.frame < frames.n_frames:
        raise ValueError(f"--frame {args.frame} out of range: {data} has {frames.n_frames} frames")
    if frames.cell is None:
        raise ValueError(f"{data} has no cell: export needs a periodic example frame")
    positions, numbers, cell = frames.positions[args.frame], frames.numbers, frames.cell[args.frame]
    start = time.perf_counter()
    program = export_model(model, positions, numbers, cell, dtype=dtype, device=args.device)
    meta = metadata(model, dtype, args.device, cell)
    meta.update(source=str(path), example=f"{data}[{args.frame}]")
    save_exported(program, args.out, meta)
    module, _ = load_exported(args.out)
    as_tensor = lambda a, t: torch.as_tensor(np.asarray(a), dtype=t, device=args.device)  # noqa: E731
    energy, forces = module(
        as_tensor(positions, dtype), as_tensor(numbers, torch.int64), as_tensor(cell, dtype),
        torch.ones(3, dtype=torch.bool, device=args.device),
    )  # fmt: skip
    ref_energy, ref_forces = reference_energy_forces(model, positions, numbers, cell)
    check = {
        "max_force_difference_ev_per_angstrom": float((forces - ref_forces).abs().max()),
        "energy_difference_ev": float(energy - ref_energy),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps({"out": str(args.out), **check}))
    return 0
