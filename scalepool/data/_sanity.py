"""Physical sanity checks of a dataset: the mistakes a schema check cannot see.

A FrameSet can be well formed (shapes, dtypes, finite values) and still be
nonsense: positions in nm instead of Å, forces in kJ/(mol·nm) instead of eV/Å,
a cell of zero thickness, overlapping atoms.  :func:`physics_findings` measures
each of these, :func:`check_physics` raises :class:`PhysicsError` for the
findings that no real dataset shows and warns (:class:`PhysicsWarning`) about
the ones a toy or unusual dataset may show.  Every message names the check,
the number that tripped it and, where there is one, the frame and the atoms.

=====================  ==========================================  =========================
check                  refused (error)                             warned
=====================  ==========================================  =========================
``meta_units``         meta ``units`` other than Å, eV/Å, eV        --
``periodic_no_cell``   meta says periodic (``periodic``, ``pbc``,   --
                       a PME/Ewald method, a box) but no cell
``degenerate_cell``    a face-to-face cell height < 0.5 Å           --
``cell_height``        height < 2 x ``cutoff`` (when one is given)  --
``density``            outside [0.001, 2] atoms/Å^3 (a unit error:  outside [0.01, 0.5]
                       nm vs Å changes it 1000-fold)                atoms/Å^3
``forces``             max |F| > 100 eV/Å                           --
``close_contact``      a pair < 0.01 Å apart, or more than half the  a pair closer than 0.5 Å
                       atoms of a frame too close (a unit error)    (H) / 0.8 Å (others)
=====================  ==========================================  =========================

The cell checks run first and a degenerate cell stops before any neighbour
search (which would need millions of periodic images).  Close contacts use the
neighbour list (vesin, as :func:`scalepool.neighbors.neighbor_pairs`): about
1.3 ms per 1,467-atom frame.

Loading (:meth:`FrameSet.load`, :func:`read_frames`) runs :func:`check_physics`
unless ``check_physics=False``; ``check_physics="strict"`` refuses warnings too.
Training code can call it with ``cutoff=`` to refuse cells too thin for a model.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np
from ase.data import chemical_symbols


class DatasetError(ValueError):
    """A dataset or trajectory is malformed; the message says what and where.

    (Defined here, in the lowest module of the data package, so that
    :mod:`~scalepool.data._frameset` can run the checks below; exported as
    ``scalepool.data.DatasetError``.)
    """


#: Smallest plausible distance (Å) of a pair involving hydrogen, and of any other pair.
MIN_DISTANCE_H = 0.5
MIN_DISTANCE = 0.8
#: Pairs closer than this (Å) are refused outright: overlapping atoms.
OVERLAP_DISTANCE = 0.01
#: A frame where more than this fraction of the atoms is too close is refused (a unit error).
CLOSE_FRACTION_REFUSED = 0.5
#: Number density (atoms/Å^3) of condensed matter (warned outside) and the range refused outside.
DENSITY_RANGE = (0.01, 0.5)
DENSITY_REFUSED = (1e-3, 2.0)
#: Largest plausible force magnitude (eV/Å).
MAX_FORCE = 100.0
#: A periodic cell thinner than this (Å, face-to-face) is degenerate.
MIN_CELL_HEIGHT = 0.5
#: Cutoff of the close-contact neighbour search (Å).  Wider than the limits because the
#: cell list then has fewer, fuller bins: 0.9 ms instead of 4.5 ms for 1,467 atoms.
_SEARCH_CUTOFF = 2.0

OVERRIDE_HINT = "pass check_physics=False (CLI: --no-physics-checks) to load it anyway"

_LENGTH_UNITS = {"å", "a", "ang", "angstrom", "angstroms", "ångström"}
_EXPECTED_UNITS = {
    "positions": ("Å", _LENGTH_UNITS),
    "cell": ("Å", _LENGTH_UNITS),
    "forces": ("eV/Å", {f"ev/{u}" for u in _LENGTH_UNITS}),
    "energy": ("eV", {"ev"}),
}
_PERIODIC_METHODS = {"pme", "ljpme", "ewald", "cutoffperiodic", "pppm"}


class PhysicsError(DatasetError):
    """A dataset fails a physical sanity check; the message names the check and the number."""


class PhysicsWarning(UserWarning):
    """A dataset looks unusual for condensed matter in Å and eV/Å (not refused)."""


@dataclasses.dataclass(frozen=True)
class Finding:
    """One tripped check: ``check`` name, ``severity`` ("error" or "warning"), the
    ``value`` that tripped it, the ``frame`` (or ``None``) and a ``message``."""

    check: str
    severity: str
    value: float
    message: str
    frame: int | None = None


# ------------------------------------------------------------------ pieces
def cell_heights(cell: np.ndarray) -> np.ndarray:
    """(F, 3) face-to-face heights (Å) of (F, 3, 3) cells with row vectors: volume / face area."""
    cell = np.asarray(cell, dtype=np.float64)
    volume = np.abs(np.linalg.det(cell))  # (F,)
    areas = np.stack(
        [np.linalg.norm(np.cross(cell[:, (k + 1) % 3], cell[:, (k + 2) % 3]), axis=-1) for k in range(3)],
        axis=-1,
    )  # (F, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(areas > 0, volume[:, None] / np.where(areas > 0, areas, 1.0), 0.0)


def _meta_periodic(meta: dict[str, Any]) -> str | None:
    """Where ``meta`` says the data are periodic, as ``meta[...] = value``; ``None`` if it does not."""
    if not isinstance(meta, dict):
        return None
    if meta.get("periodic") is True:
        return "meta['periodic'] = True"
    pbc = meta.get("pbc")
    if pbc is True or (isinstance(pbc, list) and any(v is True for v in pbc)):
        return f"meta['pbc'] = {pbc}"
    nonbonded = meta.get("nonbonded")
    if isinstance(nonbonded, dict) and str(nonbonded.get("method", "")).lower() in _PERIODIC_METHODS:
        return f"meta['nonbonded']['method'] = {nonbonded['method']!r}"
    for key in ("box", "box_nm"):
        if isinstance(meta.get(key), (int, float)) and not isinstance(meta.get(key), bool):
            return f"meta[{key!r}] = {meta[key]}"
    parameters = meta.get("parameters")
    if isinstance(parameters, dict) and isinstance(parameters.get("box_nm"), (int, float)):
        return f"meta['parameters']['box_nm'] = {parameters['box_nm']}"
    return None


def _unit_findings(meta: dict[str, Any]) -> list[Finding]:
    units = meta.get("units") if isinstance(meta, dict) else None
    if not isinstance(units, dict):
        return []
    found = []
    for field, (expected, accepted) in _EXPECTED_UNITS.items():
        unit = units.get(field)
        if unit is None:
            continue
        if str(unit).strip().lower().replace(" ", "") not in accepted:
            found.append(
                Finding(
                    "meta_units",
                    "error",
                    math.nan,
                    f"meta['units']['{field}'] = {unit!r}, but scalepool datasets hold {field} in "
                    f"{expected}; convert them (nm -> Å: x10; kJ/(mol·nm) -> eV/Å: /964.853)",
                )  # fmt: skip
            )
    return found


def _pair_label(numbers: np.ndarray, i: int, j: int) -> str:
    return f"atoms {i} ({chemical_symbols[numbers[i]]}) and {j} ({chemical_symbols[numbers[j]]})"


def _close_contacts(frames) -> list[Finding]:
    """Pairs closer than the species-aware minimum distance, frame by frame (neighbour list).

    One warning for the whole dataset (its closest pair relative to the limit and the
    counts), or one error for the first frame with overlapping atoms or with more than
    half of its atoms too close.
    """
    import vesin  # the library behind scalepool.neighbors, without its torch import (2 s)

    numbers = frames.numbers
    hydrogen = numbers == 1
    search = vesin.NeighborList(cutoff=max(MIN_DISTANCE, MIN_DISTANCE_H, _SEARCH_CUTOFF), full_list=False)
    worst: tuple[float, int, int, int, float] | None = None  # (distance / limit, frame, i, j, distance)
    n_bad_frames = n_bad_pairs = 0
    for f in range(frames.n_frames):
        cell = None if frames.cell is None else frames.cell[f]
        i, j, distance = search.compute(
            points=np.ascontiguousarray(frames.positions[f]),
            box=np.zeros((3, 3)) if cell is None else np.ascontiguousarray(cell),
            periodic=cell is not None,
            quantities="ijd",
        )
        pairs = np.stack([i, j], axis=1).astype(np.int64)
        limit = np.where(hydrogen[pairs[:, 0]] | hydrogen[pairs[:, 1]], MIN_DISTANCE_H, MIN_DISTANCE)
        bad = distance < limit
        if not bad.any():
            continue
        pairs, distance, limit = pairs[bad], distance[bad], limit[bad]
        n_bad_frames += 1
        n_bad_pairs += len(pairs)
        k = int(np.argmin(distance / limit))
        i, j = (int(a) for a in pairs[k])
        if worst is None or distance[k] / limit[k] < worst[0]:
            worst = (float(distance[k] / limit[k]), f, i, j, float(distance[k]))
        m = int(np.argmin(distance))
        if distance[m] < OVERLAP_DISTANCE:
            return [
                Finding(
                    "close_contact",
                    "error",
                    float(distance[m]),
                    f"frame {f}: {_pair_label(numbers, *(int(a) for a in pairs[m]))} are {distance[m]:.3g} Å "
                    f"apart (overlapping atoms: below {OVERLAP_DISTANCE} Å)",
                    f,
                )  # fmt: skip
            ]
        involved = len(np.unique(pairs))
        if involved > CLOSE_FRACTION_REFUSED * frames.n_atoms and involved >= 4:
            return [
                Finding(
                    "close_contact",
                    "error",
                    involved / frames.n_atoms,
                    f"frame {f}: {involved} of {frames.n_atoms} atoms ({100 * involved / frames.n_atoms:.0f}%) "
                    f"have a neighbour closer than {MIN_DISTANCE_H} Å (H) / {MIN_DISTANCE} Å (others), e.g. "
                    f"{_pair_label(numbers, i, j)} at {distance[k]:.3g} Å; are the positions in nm instead of Å?",
                    f,
                )  # fmt: skip
            ]
    if worst is None:
        return []
    _, f, i, j, d = worst
    limit = MIN_DISTANCE_H if 1 in (numbers[i], numbers[j]) else MIN_DISTANCE
    return [
        Finding(
            "close_contact",
            "warning",
            d,
            f"{n_bad_pairs} atom pair(s) in {n_bad_frames} frame(s) closer than {MIN_DISTANCE_H} Å (H) / "
            f"{MIN_DISTANCE} Å (others); closest: frame {f}, {_pair_label(numbers, i, j)} at {d:.3g} Å "
            f"(minimum {limit} Å)",
            f,
        )  # fmt: skip
    ]


# ------------------------------------------------------------------ checks
def physics_findings(frames, cutoff: float | None = None) -> list[Finding]:
    """Every tripped check of ``frames`` (see the module docstring); empty when all pass.

    ``cutoff`` (Å): also refuse periodic cells thinner than twice this model cutoff.
    """
    if not all(hasattr(frames, name) for name in ("positions", "forces", "numbers", "cell", "meta")):
        raise TypeError(f"physics checks need a FrameSet, got {type(frames).__name__}")
    found = _unit_findings(frames.meta)
    if frames.cell is None:
        evidence = _meta_periodic(frames.meta)
        if evidence is not None:
            found.append(
                Finding(
                    "periodic_no_cell",
                    "error",
                    math.nan,
                    f"{evidence} says the data are periodic, but the dataset has no cell "
                    "(array 'cell' missing); store the box, or drop the periodic entries of meta",
                )  # fmt: skip
            )
    else:
        heights = cell_heights(frames.cell)  # (F, 3) Å
        f, axis = np.unravel_index(int(np.argmin(heights)), heights.shape)
        thinnest = float(heights[f, axis])
        if thinnest < MIN_CELL_HEIGHT:
            found.append(
                Finding(
                    "degenerate_cell",
                    "error",
                    thinnest,
                    f"frame {f}: the cell is degenerate, {thinnest:.3g} Å thick along cell vector "
                    f"{'abc'[axis]} (face-to-face height; minimum {MIN_CELL_HEIGHT} Å)",
                    int(f),
                )  # fmt: skip
            )
            return found  # no neighbour search through millions of images
        if cutoff is not None and thinnest < 2 * cutoff:
            found.append(
                Finding(
                    "cell_height",
                    "error",
                    thinnest,
                    f"frame {f}: the cell is {thinnest:.4g} Å thick along cell vector {'abc'[axis]}, "
                    f"less than twice the cutoff ({cutoff} Å x 2 = {2 * cutoff:g} Å): an atom would "
                    "interact with its own periodic image",
                    int(f),
                )  # fmt: skip
            )
        density = frames.n_atoms / np.abs(np.linalg.det(frames.cell))  # atoms/Å^3
        for g, value in (
            (int(np.argmin(density)), float(density.min())),
            (int(np.argmax(density)), float(density.max())),
        ):
            if DENSITY_RANGE[0] <= value <= DENSITY_RANGE[1]:
                continue
            refused = not DENSITY_REFUSED[0] <= value <= DENSITY_REFUSED[1]
            found.append(
                Finding(
                    "density",
                    "error" if refused else "warning",
                    value,
                    f"frame {g}: number density {value:.4g} atoms/Å^3 ({frames.n_atoms} atoms in "
                    f"{frames.n_atoms / value:.4g} Å^3) is far from condensed matter "
                    f"({DENSITY_RANGE[0]}-{DENSITY_RANGE[1]} atoms/Å^3; water 0.1)"
                    + ("; are positions and cell in nm instead of Å?" if value > DENSITY_REFUSED[1] else ""),
                    g,
                )  # fmt: skip
            )
            break
    magnitude = np.linalg.norm(frames.forces.astype(np.float64), axis=-1)  # (F, N) eV/Å
    f, atom = np.unravel_index(int(np.argmax(magnitude)), magnitude.shape)
    largest = float(magnitude[f, atom])
    if largest > MAX_FORCE:
        found.append(
            Finding(
                "forces",
                "error",
                largest,
                f"frame {f}: atom {atom} ({chemical_symbols[frames.numbers[atom]]}) has a force of "
                f"{largest:.4g} eV/Å (|F| above {MAX_FORCE:g} eV/Å in {int((magnitude > MAX_FORCE).sum())} "
                "atom-frame(s)); are the forces in kJ/(mol·nm) or kcal/(mol·Å) instead of eV/Å?",
                int(f),
            )  # fmt: skip
        )
    if any(f.severity == "error" and f.check == "density" for f in found):
        return found  # a unit error already; a neighbour search adds nothing
    found.extend(_close_contacts(frames))
    return found


def check_physics(
    frames,
    source: Any = None,
    cutoff: float | None = None,
    strict: bool = False,
) -> list[Finding]:
    """Raise :class:`PhysicsError` for refused findings (all findings when ``strict``) and
    warn (:class:`PhysicsWarning`) about the others; returns the findings.

    ``source`` (a path) prefixes every message; ``cutoff`` adds the cell-height check.
    """
    findings = physics_findings(frames, cutoff=cutoff)
    prefix = f"{source}: " if source is not None else ""
    errors = [f for f in findings if strict or f.severity == "error"]
    if errors:
        detail = "; ".join(f"[{f.check}] {f.message}" for f in errors)
        raise PhysicsError(f"{prefix}fails a physical sanity check: {detail}. {OVERRIDE_HINT}")
    for finding in findings:
        warnings.warn(f"{prefix}[{finding.check}] {finding.message}", PhysicsWarning, stacklevel=3)
    return findings


def resolve_check(check_physics: bool | str) -> tuple[bool, bool]:
    """``(run, strict)`` from a ``check_physics=`` argument: True, False or ``"strict"``."""
    if check_physics is True or check_physics is False:
        return check_physics, False
    if check_physics == "strict":
        return True, True
    raise ValueError(f"check_physics must be True, False or 'strict', got {check_physics!r}")
