"""``scalepool data ...``: generate the NaCl testbed, inspect and convert datasets."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import warnings
from pathlib import Path

from ._testbeds import register_testbeds

_NO_PHYSICS_HELP = (
    "skip the physical sanity checks (close contacts, density, cell thickness, force magnitudes, "
    "periodic meta without a cell) that otherwise refuse implausible data"
)


def register(commands) -> None:
    data = commands.add_parser("data", help="generate, inspect and convert datasets")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    nacl = sub.add_parser(
        "nacl",
        help="generate the aqueous NaCl reference dataset with OpenMM (TIP3P + Joung-Cheatham, PME, 300 K)",
        description="Run OpenMM molecular dynamics of NaCl in TIP3P water and store positions, total "
        "forces, the force-group decomposition (bonded, direct, reciprocal) and energies as a .npz dataset.",
    )
    nacl.add_argument("--out", required=True, type=Path, help="output .npz path")
    nacl.add_argument("--frames", type=int, default=200, help="number of sampled frames (default 200)")
    nacl.add_argument("--seed", type=int, default=0, help="random seed (ion placement, velocities, thermostat)")
    nacl.add_argument("--box-nm", type=float, default=2.5, help="cubic box edge in nm (default 2.5: ~1,500 atoms)")
    nacl.add_argument("--molarity", type=float, default=1.0, help="NaCl concentration in mol/L (default 1.0)")
    nacl.add_argument("--stride-ps", type=float, default=None, help="time between frames in ps")
    nacl.add_argument("--equilibration-ps", type=float, default=None, help="equilibration before sampling, ps")
    nacl.add_argument("--flexible-water", action="store_true", help="flexible instead of rigid TIP3P water")
    nacl.add_argument(
        "--threads", type=int, default=1, help="OpenMM CPU threads (default 1: bitwise reproducible for a seed)"
    )
    nacl.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    nacl.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint folder (default OUT.npz.partial beside the output); a killed run re-run with the "
        "same command continues from it, and it is deleted once the dataset is written",
    )
    nacl.add_argument(
        "--checkpoint-every", type=int, default=10, help="frames between checkpoint saves (default 10)"
    )
    nacl.add_argument("--no-checkpoint", action="store_true", help="keep everything in memory, no resume")
    nacl.add_argument(
        "--restart", action="store_true", help="delete an existing checkpoint and start from scratch"
    )
    nacl.set_defaults(func=_nacl)
    register_testbeds(sub)  # graphene, peptide

    info = sub.add_parser("info", help="frames, atoms, species, box, force statistics, close-contact fraction")
    info.add_argument("path", type=Path, help="dataset (.npz) or any readable trajectory")
    info.add_argument("--topology", type=Path, default=None, help="topology for MDAnalysis trajectories")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.add_argument("--no-physics-checks", action="store_true", help=_NO_PHYSICS_HELP)
    info.set_defaults(func=_info)

    convert = sub.add_parser(
        "convert",
        help="convert between trajectory formats (npz, extxyz, TRR, ...)",
        description="Read any supported trajectory with forces and write it in another format; the format "
        "follows the file extension. Writes are atomic: a failed conversion leaves no output file.",
    )
    convert.add_argument("input", type=Path)
    convert.add_argument("output", type=Path)
    convert.add_argument("--topology", type=Path, default=None, help="topology for MDAnalysis inputs (TRR, ...)")
    convert.add_argument("--stride", type=int, default=1, help="keep every n-th frame")
    convert.add_argument("--no-physics-checks", action="store_true", help=_NO_PHYSICS_HELP)
    convert.set_defaults(func=_convert)


def _nacl(args: argparse.Namespace) -> int:
    from ..data import CheckpointInUse, generate_nacl

    options = {}
    if args.stride_ps is not None:
        options["stride_ps"] = args.stride_ps
    if args.equilibration_ps is not None:
        options["equilibration_ps"] = args.equilibration_ps
    checkpoint = None
    if not args.no_checkpoint:
        checkpoint = args.checkpoint or args.out.with_name(args.out.name + ".partial")
    start = time.perf_counter()
    try:
        frames = generate_nacl(
            n_frames=args.frames,
            seed=args.seed,
            box_nm=args.box_nm,
            molarity=args.molarity,
            rigid_water=not args.flexible_water,
            threads=args.threads,
            progress=not args.no_progress,
            checkpoint=checkpoint,
            checkpoint_every=args.checkpoint_every,
            restart=args.restart,
            out=args.out,
            **options,
        )
    except CheckpointInUse as err:
        print(f"scalepool data: error: {err}", file=sys.stderr)
        return 2
    path = args.out
    elapsed = time.perf_counter() - start
    resumed = frames.meta.get("resumes", 0)
    note = f"; resumed {resumed}x, {frames.meta['timings']['wall_s']:.0f} s in all" if resumed else ""
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB) in {elapsed:.0f} s{note}")
    return _print_info(frames)


def _print_info(frames, as_json: bool = False) -> int:
    from ..data import force_statistics, format_summary, summarize

    summary = summarize(frames)
    stats = force_statistics(frames)
    if as_json:
        print(json.dumps({**summary, "force_rms_meV_A": stats.to_dict(orient="index")}, indent=2))
    else:
        print(format_summary(summary, stats))
    return 0


@contextlib.contextmanager
def _warnings_to_stderr(command: str):
    """Print warnings as one ``scalepool data <command>: warning: ...`` line each (no source lines)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            seen = set()
            for warning in caught:
                text = str(warning.message)
                if text not in seen:
                    seen.add(text)
                    print(f"scalepool data {command}: warning: {text}", file=sys.stderr)


def _info(args: argparse.Namespace) -> int:
    from ..data import MIN_CELL_HEIGHT, DatasetError, cell_heights, read_frames

    with _warnings_to_stderr("info"):
        frames = read_frames(args.path, topology=args.topology, check_physics=not args.no_physics_checks)
    if not frames.ragged and frames.cell is not None:
        thinnest = float(cell_heights(frames.cell).min())
        if thinnest < MIN_CELL_HEIGHT:  # only reachable with --no-physics-checks
            raise DatasetError(
                f"{args.path}: cannot summarise: the cell is {thinnest:.3g} Å thick (degenerate); the "
                "close-contact search would need millions of periodic images"
            )
    return _print_info(frames, as_json=args.json)


def _convert(args: argparse.Namespace) -> int:
    from ..data import read_frames, write_frames

    with _warnings_to_stderr("convert"):
        frames = read_frames(
            args.input, topology=args.topology, stride=args.stride, check_physics=not args.no_physics_checks
        )
    try:
        path = write_frames(frames, args.output)
    except OSError as err:  # disk full, no permission: the atomic write left nothing behind
        if isinstance(err, ValueError):  # already a DatasetError naming the problem
            raise
        raise ValueError(f"cannot write {args.output}: {err.strerror or err}; nothing was written") from err
    atoms = f"{frames.n_atoms} atoms" if not frames.ragged else f"{frames.atom_counts.min()}-{frames.atom_counts.max()} atoms"
    print(f"wrote {path}: {frames.n_frames} frames of {atoms}")
    return 0
