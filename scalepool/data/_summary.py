"""Dataset summary: what ``scalepool data info`` prints."""

from __future__ import annotations

import numpy as np
import pandas as pd
from ase.data import chemical_symbols

from ..units import CHLORINE, CLOSE_CONTACT_CUTOFF, CONTACT_PAIR_DISTANCE, EV_TO_MEV, ION_NUMBERS, SODIUM
from ._frameset import FrameSet


def force_statistics(frames: FrameSet) -> pd.DataFrame:
    """RMS and mean absolute force component per species and per force part.

    Returns a DataFrame indexed by species symbol (plus ``all``) with one
    column per part (``total`` and each entry of ``frames.force_parts``), in meV/Å.
    """
    numbers = frames.numbers_flat if frames.ragged else frames.numbers
    parts = (
        {"total": frames.forces_flat[None]}
        if frames.ragged
        else {"total": frames.forces, **frames.force_parts}
    )
    rows = {}
    groups = {chemical_symbols[z]: numbers == z for z in np.unique(numbers)}
    groups["all"] = np.ones(len(numbers), dtype=bool)
    for name, mask in groups.items():
        row = {}
        for part, forces in parts.items():
            f = forces[:, mask].astype(np.float64)
            row[f"rms_{part}"] = EV_TO_MEV * float(np.sqrt(np.mean(f**2)))
        row["n_atoms"] = int(mask.sum())
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def summarize(frames: FrameSet, close_cutoff: float = CLOSE_CONTACT_CUTOFF) -> dict:
    """Frames, atoms, species, box, force statistics and close-contact fraction."""
    if frames.ragged:
        return _summarize_ragged(frames)
    species = {chemical_symbols[z]: int((frames.numbers == z).sum()) for z in np.unique(frames.numbers)}
    summary = {
        "n_frames": frames.n_frames,
        "n_atoms": frames.n_atoms,
        "species": species,
        "periodic": frames.periodic,
        "force_parts": sorted(frames.force_parts),
        "has_energy": frames.energy is not None,
        "generator": frames.meta.get("generator", "unknown"),
    }
    if frames.cell is not None:
        lengths = np.linalg.norm(frames.cell, axis=-1)
        summary["box_lengths_mean_A"] = lengths.mean(axis=0).round(4).tolist()
        summary["box_volume_mean_A3"] = float(np.abs(np.linalg.det(frames.cell)).mean())
    if frames.force_parts:
        total = sum(v.astype(np.float64) for v in frames.force_parts.values())
        summary["max_abs_parts_minus_total_eV_A"] = float(np.abs(total - frames.forces).max())
    if np.isin(frames.numbers, ION_NUMBERS).any():
        from ._descriptors import frameset_descriptors

        descriptors = frameset_descriptors(frames, cutoff=close_cutoff)
        summary["close_contact_fraction_atoms"] = float(descriptors["close_contact"].mean())
        ions = np.isin(frames.numbers, ION_NUMBERS)
        summary["close_contact_fraction_ions"] = float(descriptors["close_contact"][:, ions].mean())
        summary["min_ion_ion_distance_A"] = float(np.min(descriptors["min_ion_ion"]))
        summary["close_cutoff_A"] = close_cutoff
        summary.update(_contact_pairs(frames))
    return summary


def _summarize_ragged(frames: FrameSet) -> dict:
    """Frames, atoms per frame, species, boundaries and labels of a ragged dataset."""
    numbers, counts = frames.numbers_flat, frames.atom_counts
    periodic = frames.pbc.all(axis=1)
    return {
        "n_frames": frames.n_frames,
        "layout": "ragged",
        "n_atoms_total": frames.n_atoms_total,
        "atoms_per_frame_min_max": [int(counts.min()), int(counts.max())],
        "species": {chemical_symbols[z]: int((numbers == z).sum()) for z in np.unique(numbers)},
        "periodic_frames": int(periodic.sum()),
        "open_frames": int((~periodic).sum()),
        "has_energy": frames.energy is not None,
        "has_stress": frames.stress is not None,
        "generator": frames.meta.get("generator", "unknown"),
    }


def _contact_pairs(frames: FrameSet) -> dict:
    """Na-Cl g(r) first peak and minimum, and the share of ions in a contact pair."""
    from ._rdf import contact_ion_mask, first_minimum, radial_distribution

    if frames.cell is None or not (np.isin(SODIUM, frames.numbers) and np.isin(CHLORINE, frames.numbers)):
        return {}
    heights = np.abs(np.linalg.det(frames.cell)) / np.linalg.norm(
        np.cross(frames.cell[:, [1, 2, 0]], frames.cell[:, [2, 0, 1]]), axis=-1
    ).max(axis=-1)
    r, g = radial_distribution(
        frames, SODIUM, CHLORINE, r_max=min(8.0, 0.5 * float(heights.min())), width=0.1
    )
    out = {"NaCl_rdf_first_peak_A": round(float(r[np.argmax(g)]), 3)}
    try:
        out["NaCl_rdf_first_minimum_A"] = round(first_minimum(r, g), 3)
    except ValueError:  # too few pairs for a peak
        pass
    ions = np.isin(frames.numbers, ION_NUMBERS)
    mask = contact_ion_mask(frames.positions, frames.numbers, frames.cell, CONTACT_PAIR_DISTANCE)
    out["contact_pair_fraction_ions"] = float(mask[:, ions].mean())
    out["contact_pair_fraction_frames"] = float(mask.any(axis=1).mean())
    out["contact_pair_distance_A"] = CONTACT_PAIR_DISTANCE
    return out


def format_summary(summary: dict, stats: pd.DataFrame) -> str:
    lines = [f"{key:>32}: {value}" for key, value in summary.items()]
    lines.append("")
    lines.append("force RMS per Cartesian component, per species and part (meV/Å):")
    lines.append(stats.round(1).to_string())
    return "\n".join(lines)
