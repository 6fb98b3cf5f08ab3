"""Peak memory and time of the branches against atom count.

For every (system, branch, mode) case a fresh Python process builds the
branch (float32, default settings, seed 0), loads one frame and then runs

- ``infer``: energy and forces in eval mode (one backward pass);
- ``train``: energy and forces in train mode (graph of the forces kept), a
  force loss ``mean |F - F_ref|^2`` (F_ref = 0) back-propagated to the weights
  (the double backward of training).

It reports the **peak resident set size above the idle baseline**: the
baseline is ``ru_maxrss`` of the child just before the first step (Python,
torch, the model, the frame and its tensors already loaded; 300-500 MB on CPU),
the peak is ``ru_maxrss`` after the step, so the number is what the step
itself adds.  On CUDA ``peak_mb`` (and ``KB/atom``, and the ``--max-rss-gb``
prediction) is GPU memory instead: ``torch.cuda.max_memory_allocated`` during
the steps minus ``torch.cuda.memory_allocated`` before them (``baseline_mb``),
and ``cuda_peak_mb`` is the total ``max_memory_allocated``.  ``--precision``
runs the forward as ``scalepool train --precision`` does (``bf16-mixed``,
``fp16-mixed`` on CUDA only).
Time is the wall-clock seconds of the step after the first (one warm-up), and
its CPU seconds.  The neighbour search (vesin) is part of every step.

Systems
-------
- ``nacl``: the 1,467-atom NaCl testbed box (:func:`scalepool.data.build_nacl_system`,
  2.5 nm, 1 M; OpenMM's pre-equilibrated water, no MD) tiled ``a x b x c``
  times to reach each of ``--sizes`` (atom counts; the nearest near-cubic
  tiling is used: 1,467 x 1, 2, 4, 8, 12, 18, 27, 64 ...).
- ``protein`` (``--protein``): a 24-residue helical peptide built with
  PeptideBuilder, hydrogens added and solvated with TIP3P and 0.15 M NaCl by
  ``openmm.app.Modeller`` in a ``--protein-box`` Å cube (59 Å: ~19.5k atoms).

Output: a table on stdout and, with ``--out PATH``, a CSV plus
``PATH.provenance.json``; the CSV also holds ``n_edges`` (the branch's atom-level
graph: full list at its backbone's cutoff) and ``chunked`` (whether that graph's
edge pass ran in chunks: more edges than the backbone's ``edge_chunk``).  ``--max-rss-gb`` skips a case whose predicted peak
(from the per-atom peak of the largest smaller case of that branch and mode)
exceeds it, so a run never drives the machine into swap.

    python benchmarks/memory.py --sizes 1500 6000 12000 --branches short --train
    python benchmarks/memory.py --sizes 1500 100000 --protein --out results/memory.csv
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP runtime

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

MODES = ("infer", "train")
BRANCH_CHOICES = ("short", "long", "muse")
COLUMNS = (
    "system", "n_atoms", "branch", "mode", "status", "baseline_mb", "peak_mb", "kb_per_atom",
    "cuda_peak_mb", "wall_s", "cpu_s", "us_per_atom", "n_edges", "chunked",
)  # fmt: skip


# ----------------------------------------------------------------- systems
def _tiling(n_base: int, target: int) -> tuple[int, int, int]:
    """The near-cubic tiling (a >= b >= c, a - c <= 1) whose atom count is nearest ``target``."""
    best = (1, 1, 1)
    for m in range(1, 12):
        for reps in ((m, m - 1, m - 1), (m, m, m - 1), (m, m, m)):
            if min(reps) < 1:
                continue
            if abs(n_base * math.prod(reps) - target) < abs(n_base * math.prod(best) - target):
                best = reps
    return best


def replicate(positions: np.ndarray, numbers: np.ndarray, cell: np.ndarray, reps) -> tuple:
    """Tile one periodic frame: positions (N, 3) Å, numbers (N,), cell (3, 3) Å rows.

    Returns positions (N * prod(reps), 3), numbers, and the cell with rows scaled by ``reps``.
    """
    shifts = np.array([[i, j, k] for i in range(reps[0]) for j in range(reps[1]) for k in range(reps[2])])
    tiled = (positions[None] + (shifts @ cell)[:, None]).reshape(-1, 3)
    return tiled, np.tile(numbers, len(shifts)), cell * np.asarray(reps, dtype=float)[:, None]


def nacl_box() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 1,467-atom testbed box (positions Å, numbers, cell Å rows), straight from Modeller."""
    from scalepool.data import build_nacl_system

    topology, _, positions = build_nacl_system(box_nm=2.5, molarity=1.0, seed=0)
    numbers = np.array([a.element.atomic_number for a in topology.atoms()])
    cell = np.asarray([[v.x, v.y, v.z] for v in topology.getPeriodicBoxVectors()]) * 10.0  # nm -> Å
    return positions, numbers, cell


def solvated_peptide(box: float, n_residues: int = 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A helical peptide (PeptideBuilder) with hydrogens, in TIP3P and 0.15 M NaCl (Modeller).

    box : cube edge, Å.  Returns positions (N, 3) Å, numbers (N,), cell (3, 3) Å rows.
    """
    import openmm
    from Bio.PDB import PDBIO
    from openmm import app, unit
    from PeptideBuilder import Geometry, PeptideBuilder

    sequence = ("AEAAAKEAAAKA" * 4)[:n_residues]
    structure = None
    for k, residue in enumerate(sequence):
        geo = Geometry.geometry(residue)
        geo.phi, geo.psi_im1 = -57.0, -47.0
        structure = (
            PeptideBuilder.initialize_res(geo) if k == 0 else PeptideBuilder.add_residue(structure, geo)
        )
    PeptideBuilder.add_terminal_OXT(structure)
    text = io.StringIO()
    writer = PDBIO()
    writer.set_structure(structure)
    writer.save(text)
    pdb = app.PDBFile(io.StringIO(text.getvalue()))
    forcefield = app.ForceField("amber14-all.xml", "amber14/tip3p.xml")
    modeller = app.Modeller(pdb.topology, pdb.positions)
    modeller.addHydrogens(forcefield, pH=7.0)
    peptide = np.asarray(modeller.positions.value_in_unit(unit.nanometer))
    peptide = peptide - peptide.mean(0) + box / 20.0  # centred in the box, nm
    modeller = app.Modeller(
        modeller.topology, unit.Quantity([openmm.Vec3(*x) for x in peptide], unit.nanometer)
    )
    edge = box / 10.0
    modeller.addSolvent(
        forcefield, boxSize=openmm.Vec3(edge, edge, edge) * unit.nanometer, ionicStrength=0.15 * unit.molar
    )
    positions = np.asarray(modeller.positions.value_in_unit(unit.nanometer)) * 10.0
    numbers = np.array([a.element.atomic_number for a in modeller.topology.atoms()])
    return positions, numbers, np.eye(3) * box


# ----------------------------------------------------------------- one case (child process)
def _maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_case(frame: str, branch: str, mode: str, device: str, threads: int, precision: str = "float32") -> dict:
    """Build ``branch``, load ``frame`` (.npz), run one step and return the measurements."""
    import torch

    from scalepool.models import AtomsBatch, build_branch
    from scalepool.train import autocast

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = np.load(frame)
    model = build_branch(branch).to(device)
    model.train(mode == "train")
    batch = AtomsBatch.from_arrays(
        data["positions"][None], data["numbers"], data["cell"][None], device=device, dtype=torch.float32
    )
    reference = torch.zeros_like(batch.positions)

    def step():
        if mode == "infer":
            with autocast(precision, device):
                out = model(batch)
            return float(out["energy"].sum())
        with autocast(precision, device):
            out = model(batch, create_graph=True)
        loss = (out["forces"] - reference).square().mean()
        model.zero_grad(set_to_none=True)
        loss.backward()
        return float(loss)

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    cuda = device.startswith("cuda")
    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated() / 2**20 if cuda else _maxrss_mb()
    step()
    sync()
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _maxrss_mb()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    step()
    sync()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else float("nan")
    n_edges, chunked = edge_path(model, batch)  # after the measured steps: adds nothing to their peak
    return dict(
        baseline_mb=baseline, peak_mb=peak - baseline, cuda_peak_mb=cuda_peak, wall_s=wall, cpu_s=cpu,
        n_edges=n_edges, chunked=chunked,
    )


def edge_path(model, batch) -> tuple[int, bool]:
    """Edges of the branch's atom-level graph (full list at its backbone's cutoff) and whether
    its edge pass runs in chunks (``edge_chunk_size`` of the backbone's ``edge_chunk``)."""
    from scalepool.models._edge_chunks import edge_chunk_size

    backbone = next(m for m in model.modules() if hasattr(m, "edge_chunk") and hasattr(m, "cutoff"))
    n_edges = int(batch.neighbors(backbone.cutoff)[0].shape[0])
    return n_edges, bool(edge_chunk_size(n_edges, backbone.edge_chunk))


# ----------------------------------------------------------------- driver
def _systems(args, workdir: Path) -> list[tuple[str, int, Path]]:
    out = []
    if args.sizes:
        positions, numbers, cell = nacl_box()
        for target in args.sizes:
            reps = _tiling(len(numbers), target)
            p, z, c = replicate(positions, numbers, cell, reps)
            path = workdir / f"nacl_{len(z)}.npz"
            np.savez(path, positions=p, numbers=z, cell=c)
            out.append(("nacl " + "x".join(map(str, reps)), len(z), path))
    if args.protein:
        p, z, c = solvated_peptide(args.protein_box)
        path = workdir / f"protein_{len(z)}.npz"
        np.savez(path, positions=p, numbers=z, cell=c)
        out.append(("peptide+water", len(z), path))
    return out


def _child(args) -> int:
    result = run_case(args.child, args.branches[0], args.modes[0], args.device, args.threads, args.precision)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def _fmt(row: dict) -> str:
    def num(key, spec):
        value = row.get(key)
        return (
            "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)
        )

    return (
        f"{row['system']:<16} {row['n_atoms']:>7d} {row['branch']:<6} {row['mode']:<5} {row['status']:<8} "
        f"{num('baseline_mb', '8.0f')} {num('peak_mb', '9.0f')} {num('kb_per_atom', '8.1f')} "
        f"{num('cuda_peak_mb', '9.0f')} {num('wall_s', '8.2f')} {num('cpu_s', '8.2f')} {num('us_per_atom', '9.0f')}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=[1500, 6000, 12000, 20000],
        help="target atom counts of the tiled NaCl testbed (default: 1.5k 6k 12k 20k)",
    )
    parser.add_argument("--branches", nargs="+", choices=BRANCH_CHOICES, default=["short"])
    parser.add_argument("--train", action="store_true", help="also time and measure a training step")
    parser.add_argument("--no-infer", action="store_true", help="skip the inference cases")
    parser.add_argument("--protein", action="store_true", help="also run the solvated peptide")
    parser.add_argument(
        "--protein-box", type=float, default=59.0, help="peptide box edge, Å (59: ~19.5k atoms)"
    )
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:k]")
    parser.add_argument("--threads", type=int, default=2, help="torch threads per case")
    parser.add_argument(
        "--precision", choices=("float32", "bf16-mixed", "fp16-mixed"), default="float32",
        help="model forward precision (scalepool train --precision; fp16-mixed: CUDA only)",
    )  # fmt: skip
    parser.add_argument("--max-rss-gb", type=float, default=14.0, help="skip cases predicted above this peak")
    parser.add_argument("--out", type=Path, help="CSV path; PATH.provenance.json is written next to it")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--modes", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child(args)
    modes = ([] if args.no_infer else ["infer"]) + (["train"] if args.train else [])
    rows: list[dict] = []
    import scalepool

    print(f"scalepool from {Path(scalepool.__file__).parent}")
    if args.device.startswith("cuda"):
        print("peak_mb: CUDA max_memory_allocated of the steps minus memory_allocated before them (GPU memory)")
    else:
        print("peak_mb: peak RSS of the step minus the child's idle baseline (ru_maxrss before the first step)")
    print(f"precision {args.precision}, device {args.device}")
    print(f"{'system':<16} {'atoms':>7} {'branch':<6} {'mode':<5} {'status':<8} {'base_MB':>8} "
          f"{'peak_MB':>9} {'KB/atom':>8} {'cuda_MB':>9} {'wall_s':>8} {'cpu_s':>8} {'us/atom':>9}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for system, n_atoms, path in _systems(args, Path(tmp)):
            for branch in args.branches:
                for mode in modes:
                    row = dict(system=system, n_atoms=n_atoms, branch=branch, mode=mode)
                    done = [
                        r for r in rows if r["branch"] == branch and r["mode"] == mode and r["status"] == "ok"
                    ]
                    largest = max(done, key=lambda r: r["n_atoms"], default=None)
                    predicted = 0.0 if largest is None else largest["kb_per_atom"] * n_atoms / 2**20
                    if predicted > args.max_rss_gb:
                        row["status"] = "skipped"
                    else:
                        row.update(_spawn(path, branch, mode, args))
                    rows.append(row)
                    print(_fmt(row), flush=True)
    if args.out is not None:
        _write(args, rows)
    return 0


def _spawn(path: Path, branch: str, mode: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(path), "--branches", branch,
           "--modes", mode, "--device", args.device, "--threads", str(args.threads),
           "--precision", args.precision]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        print(f"  case failed ({path.name}, {branch}, {mode}): {tail[0]}", file=sys.stderr)
        return dict(status="killed" if proc.returncode < 0 else "failed")
    result = json.loads(lines[-1][len("RESULT ") :])
    n_atoms = int(np.load(path)["numbers"].shape[0])
    result.update(
        status="ok",
        kb_per_atom=result["peak_mb"] * 1024.0 / n_atoms,
        us_per_atom=result["wall_s"] * 1e6 / n_atoms,
    )
    return result


def _write(args, rows: list[dict]) -> None:
    import pandas as pd

    from scalepool._files import write_csv, write_json
    from scalepool.provenance import provenance

    table = pd.DataFrame(rows).reindex(columns=list(COLUMNS))
    write_csv(args.out, table)
    params = {k: v for k, v in vars(args).items() if k not in ("child", "modes", "out")}
    write_json(Path(str(args.out) + ".provenance.json"), provenance("memory-benchmark", params))
    print(f"wrote {args.out}")


def plot(csv_path: str | os.PathLike, figure_path: str | os.PathLike) -> None:
    """Peak memory per atom and time per atom against atom count, from a CSV this script wrote."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    table = pd.read_csv(csv_path)
    table = table[table["status"] == "ok"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for (branch, mode), part in table.groupby(["branch", "mode"]):
        part = part.sort_values("n_atoms")
        axes[0].plot(part["n_atoms"], part["kb_per_atom"], "o-", label=f"{branch} {mode}")
        axes[1].plot(part["n_atoms"], part["us_per_atom"], "o-", label=f"{branch} {mode}")
    axes[0].set(xscale="log", xlabel="atoms", ylabel="peak RSS above baseline (KB/atom)")
    axes[1].set(xscale="log", xlabel="atoms", ylabel="wall time (µs/atom)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figure_path)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
