"""``scalepool data graphene`` and ``scalepool data peptide``: the MuSE paper's two extra testbeds."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="checkpoint folder (default OUT.npz.partial beside the output); a killed run re-run with the "
        "same command continues from it, and it is deleted once the dataset is written",
    )
    parser.add_argument("--no-checkpoint", action="store_true", help="keep everything in memory, no resume")
    parser.add_argument("--restart", action="store_true", help="delete an existing checkpoint and start over")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def register_testbeds(sub) -> None:
    """Add the ``graphene`` and ``peptide`` subcommands to ``scalepool data``."""
    graphene = sub.add_parser(
        "graphene",
        help="molecules above a periodic graphene sheet with GFN2-xTB (tblite) energies and forces",
        description="Sample benzene, water and pyridine above a periodic graphene sheet (heights from contact, "
        "2.5 Å, to 10 Å, random lateral offsets and orientations, thermal displacements) and label them with "
        "GFN2-xTB (D4 included) from tblite. Writes OUT.npz (a ragged dataset) and OUT.profile.npz, the energy "
        "profile E(d) of each molecule on a fine height grid (the evaluation set).",
    )
    graphene.add_argument("--out", required=True, type=Path, help="output .npz path")
    graphene.add_argument("--frames", type=int, default=200, help="number of sampled frames (default 200)")
    graphene.add_argument(
        "--seed", type=int, default=0, help="random seed (frame i uses default_rng([seed, i]))"
    )
    graphene.add_argument(
        "--molecules", default="benzene,water,pyridine", help="comma-separated molecules (default all three)"
    )
    graphene.add_argument(
        "--sheet-size", type=int, default=5, help="graphene supercell n x n (default 5: 50 C)"
    )
    graphene.add_argument("--height-min", type=float, default=2.5, help="lowest height above the sheet, Å")
    graphene.add_argument("--height-max", type=float, default=10.0, help="highest height above the sheet, Å")
    graphene.add_argument(
        "--displacement", type=float, default=0.05, help="thermal displacement per component, Å"
    )
    graphene.add_argument("--profile-step", type=float, default=0.1, help="energy-profile grid step, Å")
    graphene.add_argument("--no-profile", action="store_true", help="skip the energy profile")
    graphene.add_argument("--method", default="GFN2-xTB", choices=("GFN2-xTB", "GFN1-xTB"), help="xTB method")
    graphene.add_argument("--device", default="cpu", help="only 'cpu': tblite runs on the CPU")
    _checkpoint_arguments(graphene)
    graphene.set_defaults(func=_graphene)

    peptide = sub.add_parser(
        "peptide",
        help="chignolin folding trajectories with OpenMM (amber14, GBn2 implicit solvent or TIP3P)",
        description="Build chignolin (GYDPETGTWG) from its sequence, run Langevin segments that visit the folded "
        "and unfolded states (hairpin at 300 K, hairpin at 450 K, extended chain at 300 K) and store positions, "
        "forces, their force-group decomposition, energies and per-frame folding coordinates (C-alpha RMSD to "
        "the model hairpin, fraction of native contacts, radius of gyration).",
    )
    peptide.add_argument("--out", required=True, type=Path, help="output .npz path")
    peptide.add_argument("--frames", type=int, default=600, help="number of sampled frames (default 600)")
    peptide.add_argument("--seed", type=int, default=0, help="random seed (velocities, thermostat)")
    peptide.add_argument("--sequence", default="GYDPETGTWG", help="one-letter sequence (default chignolin)")
    peptide.add_argument(
        "--solvent", choices=("implicit", "explicit"), default="implicit", help="GBn2 or TIP3P"
    )
    peptide.add_argument(
        "--segments",
        default=None,
        help="comma-separated START:KELVIN (START hairpin or extended); default hairpin:300,hairpin:450,"
        "extended:300 (explicit solvent: hairpin:300,hairpin:450)",
    )
    peptide.add_argument("--stride-ps", type=float, default=1.0, help="time between frames in ps (default 1)")
    peptide.add_argument("--equilibration-ps", type=float, default=20.0, help="equilibration per segment, ps")
    peptide.add_argument("--minimize-iterations", type=int, default=500, help="minimiser steps per segment")
    peptide.add_argument(
        "--device", default="cpu", choices=("cpu", "cuda", "reference"), help="OpenMM platform"
    )
    peptide.add_argument(
        "--threads", type=int, default=1, help="OpenMM CPU threads (1: bitwise reproducible)"
    )
    peptide.add_argument("--checkpoint-every", type=int, default=10, help="frames between checkpoint saves")
    _checkpoint_arguments(peptide)
    peptide.set_defaults(func=_peptide)


def _checkpoint(args: argparse.Namespace) -> Path | None:
    if args.no_checkpoint:
        return None
    return args.checkpoint or args.out.with_name(args.out.name + ".partial")


def _graphene(args: argparse.Namespace) -> int:
    from ..data import CheckpointInUse, generate_graphene

    if args.device.lower() != "cpu":
        print(
            f"scalepool data graphene: error: tblite runs on the CPU only, got --device {args.device}",
            file=sys.stderr,
        )
        return 2
    start = time.perf_counter()
    try:
        result = generate_graphene(
            n_frames=args.frames,
            seed=args.seed,
            molecules=tuple(m.strip() for m in args.molecules.split(",") if m.strip()),
            sheet_size=args.sheet_size,
            height_min=args.height_min,
            height_max=args.height_max,
            displacement=args.displacement,
            profile_step=None if args.no_profile else args.profile_step,
            method=args.method,
            progress=not args.no_progress,
            checkpoint=_checkpoint(args),
            restart=args.restart,
            out=args.out,
        )
    except CheckpointInUse as err:
        print(f"scalepool data: error: {err}", file=sys.stderr)
        return 2
    per_frame = result["meta"]["timings"]["s_per_frame"]
    note = f", {per_frame:.2f} s per frame" if per_frame else ""
    print(
        f"wrote {args.out} ({len(result['frames'])} frames) and {len(result['profile'])} profile points "
        f"in {time.perf_counter() - start:.0f} s{note}"
    )
    return 0


def _segments(text: str | None, solvent: str):
    if text is None:
        return (("hairpin", 300.0), ("hairpin", 450.0)) if solvent == "explicit" else None
    segments = []
    for item in text.split(","):
        start, _, kelvin = item.partition(":")
        try:
            segments.append((start.strip(), float(kelvin)))
        except ValueError:
            raise ValueError(f"--segments: {item!r} is not START:KELVIN (e.g. hairpin:300)") from None
    return tuple(segments)


def _peptide(args: argparse.Namespace) -> int:
    from ..data import CheckpointInUse, generate_peptide

    options = {}
    segments = _segments(args.segments, args.solvent)
    if segments is not None:
        options["segments"] = segments
    start = time.perf_counter()
    try:
        frames = generate_peptide(
            n_frames=args.frames,
            seed=args.seed,
            sequence=args.sequence,
            solvent=args.solvent,
            stride_ps=args.stride_ps,
            equilibration_ps=args.equilibration_ps,
            minimize_iterations=args.minimize_iterations,
            device=args.device,
            threads=args.threads,
            progress=not args.no_progress,
            checkpoint=_checkpoint(args),
            checkpoint_every=args.checkpoint_every,
            restart=args.restart,
            out=args.out,
            **options,
        )
    except CheckpointInUse as err:
        print(f"scalepool data: error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out} ({frames.n_frames} frames of {frames.n_atoms} atoms) in "
        f"{time.perf_counter() - start:.0f} s, {frames.meta['timings']['s_per_frame']:.2f} s per frame of sampling"
    )
    return 0
