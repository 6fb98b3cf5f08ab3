"""Adapter overhead: scalepool's MACE and SO3krates backbones against the peer models called directly.

On the 1,467-atom water/NaCl frame (``scalepool.testing.water_box``, 25 Å, or
the first frame of ``--data``), energy + forces, eval mode, each backbone at
its default (or ``--small``) hyperparameters is timed four ways:

- ``adapter``: ``model(batch)``, our embed/readout path, the neighbour list
  computed once beforehand (the same pairs the peer gets);
- ``peer``: the peer's own ``forward(data, compute_force=True)`` on the same
  neighbour list (``model.peer_inputs``): its own edge vectors, readouts and
  autograd forces;
- ``adapter+nl``: the adapter including our vesin neighbour list;
- ``peer+pipeline``: the peer including its own data pipeline (ase Atoms ->
  Configuration -> AtomicData with its own neighbour list -> batch).

``overhead %`` is ``adapter / peer - 1`` (target <= 10 %); the energies of the
two paths are printed too (they agree to float round-off).

    python benchmarks/backbones.py                 # 1 thread, 5 repeats, float32
    python benchmarks/backbones.py --backbones mace --repeats 3 --json out.json --device cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import numpy as np
import torch

from scalepool.data import FrameSet
from scalepool.models import BACKBONES, AtomsBatch, keep_freed_memory
from scalepool.testing import water_box

SMALL = {
    "mace": dict(num_channels=16, max_L=1, correlation=2, num_interactions=2),
    "so3krates": dict(num_features=24, degrees=[1, 2], num_layers=2, num_heads=2),
}


_FIELDS = ("positions", "numbers", "frame_index", "cell", "n_frames")


@dataclasses.dataclass
class FixedNeighbors(AtomsBatch):
    """An AtomsBatch whose neighbour list was computed once (times the model, not vesin)."""

    pairs: tuple | None = None

    def neighbors(self, cutoff: float, full_list: bool = True):
        return self.pairs


def median_time(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    """Median wall and process-CPU seconds of ``fn()`` (one warm-up call first)."""
    wall, cpu = [], []
    for r in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if r:
            wall.append(time.perf_counter() - w0)
            cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def _own_pipeline(name: str, model, positions, numbers, cell, dtype, device) -> dict:
    """The peer's own data pipeline on one frame: its neighbour list, its AtomicData, its batch."""
    import ase

    atoms = ase.Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        if name == "mace":
            from mace import data as mace_data
            from mace import tools
            from mace.tools import torch_geometric

            item = mace_data.AtomicData.from_config(
                mace_data.config_from_atoms(atoms),
                z_table=tools.AtomicNumberTable(model.config["species"]),
                cutoff=model.cutoff,
            )
            loader = torch_geometric.dataloader.DataLoader([item], batch_size=1)
        else:
            from so3krates_torch.data.atomic_data import AtomicData, get_data_loader
            from so3krates_torch.data.utils import config_from_atoms
            from so3krates_torch.tools.utils import AtomicNumberTable

            item = AtomicData.from_config(
                config_from_atoms(atoms), z_table=AtomicNumberTable(list(range(1, 119))), cutoff=model.cutoff
            )
            loader = get_data_loader([item], batch_size=1, shuffle=False)
    finally:
        torch.set_default_dtype(previous)
    return next(iter(loader)).to(device).to_dict()


def peer_module(name: str, model):
    return model.mace if name == "mace" else model.so3krates


def time_backbone(name: str, batch: AtomsBatch, base, args, dtype, device) -> dict:
    """One row of the table: the four timings of backbone ``name`` on ``batch``."""
    positions, numbers, cell = base
    torch.manual_seed(0)
    model = BACKBONES[name](**(SMALL[name] if args.small else {})).to(device=device, dtype=dtype).eval()
    peer = peer_module(name, model)
    pairs = batch.neighbors(model.cutoff)
    fixed = FixedNeighbors(**{f: getattr(batch, f) for f in _FIELDS}, pairs=pairs)
    inputs = model.peer_inputs(batch)

    def run_adapter(b=fixed):
        return model(b)["forces"].sum().item()

    def run_adapter_nl():
        return model(batch)["forces"].sum().item()

    def run_peer():
        data = dict(inputs, positions=batch.positions.detach().clone())
        return peer(data, compute_force=True)["forces"].sum().item()

    def run_peer_pipeline():
        data = _own_pipeline(name, model, positions, numbers, cell, dtype, device)
        return peer(data, compute_force=True)["forces"].sum().item()

    e_adapter = float(model(fixed)["energy"].sum())
    e_peer = float(
        peer(dict(inputs, positions=batch.positions.detach().clone()), compute_force=True)["energy"].sum()
    )
    times = {
        key: median_time(fn, args.repeats, device)
        for key, fn in (
            ("adapter", run_adapter),
            ("peer", run_peer),
            ("adapter+nl", run_adapter_nl),
            ("peer+pipeline", run_peer_pipeline),
        )
    }
    clock = 1 if device.type == "cpu" and args.threads == 1 else 0  # CPU time when it is the cost
    row = {
        "backbone": name,
        "n_atoms": batch.n_atoms,
        "n_pairs": int(pairs[0].shape[0]),
        "parameters": sum(p.numel() for p in model.parameters()),
        "energy_adapter_eV": e_adapter,
        "energy_peer_eV": e_peer,
        "clock": "cpu" if clock else "wall",
        **{f"{key}_ms": 1e3 * value[clock] for key, value in times.items()},
        **{f"{key}_wall_ms": 1e3 * value[0] for key, value in times.items()},
    }
    row["overhead_pct"] = 100.0 * (row["adapter_ms"] / row["peer_ms"] - 1.0)
    row["overhead_with_nl_pct"] = 100.0 * (row["adapter+nl_ms"] / row["peer+pipeline_ms"] - 1.0)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="dataset .npz whose first frame is timed")
    parser.add_argument(
        "--backbones", nargs="+", default=["mace", "so3krates"], choices=["mace", "so3krates"]
    )
    parser.add_argument("--small", action="store_true", help="the small widths of the backbone study")
    parser.add_argument("--repeats", type=int, default=5, help="timed evaluations (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: shared machine)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--float64", action="store_true", help="evaluate in float64 (default float32)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    dtype = torch.float64 if args.float64 else torch.float32
    device = torch.device(args.device)
    if args.data:
        frames = FrameSet.load(args.data)
        positions, numbers, cell = frames.positions[0], frames.numbers, frames.cell[0]
    else:
        box = water_box(box=25.0, n_ion_pairs=9, seed=0)
        positions, numbers, cell = box.positions[0], box.numbers, box.cell[0]
    batch = AtomsBatch(
        positions=torch.as_tensor(positions, dtype=dtype, device=device),
        numbers=torch.as_tensor(numbers, dtype=torch.long, device=device),
        frame_index=torch.zeros(len(numbers), dtype=torch.long, device=device),
        cell=torch.as_tensor(np.asarray(cell)[None], dtype=dtype, device=device),
        n_frames=1,
    )

    rows = [
        time_backbone(name, batch, (positions, numbers, cell), args, dtype, device) for name in args.backbones
    ]

    print(f"energy + forces, {rows[0]['n_atoms']} atoms, {dtype}, {args.threads} thread(s), {device}")
    print(
        "| backbone | pairs | params | adapter ms | peer ms | overhead % | adapter+NL ms | peer+pipeline ms "
        "| overhead incl. NL % | E adapter - E peer (eV) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['backbone']} | {r['n_pairs']} | {r['parameters']} | {r['adapter_ms']:.1f} | {r['peer_ms']:.1f} "
            f"| {r['overhead_pct']:+.1f} | {r['adapter+nl_ms']:.1f} | {r['peer+pipeline_ms']:.1f} "
            f"| {r['overhead_with_nl_pct']:+.1f} | {r['energy_adapter_eV'] - r['energy_peer_eV']:.2e} |"
        )
    if args.json:
        from scalepool._files import write_json

        write_json(args.json, {"rows": rows, "versions": _versions()})
    return 0


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("torch", "mace-torch", "so3krates-torch", "e3nn"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "absent"
    return out


if __name__ == "__main__":
    raise SystemExit(main())
