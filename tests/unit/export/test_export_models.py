"""Exported models run with plain torch (no scalepool importable) and give the model's forces.

Each branch (short, long with its P3M head, MuSE) and the mixed model is exported
on a 1.9 nm NaCl testbed box (627 atoms), written with ``save_exported``, and run
in a subprocess started with ``python -I -S`` from a temporary folder: no site
hooks (so no editable-install finder), no PYTHONPATH, only torch's site-packages
on ``sys.path``; the subprocess first checks that ``scalepool`` cannot be found.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from scalepool.export import (
    SIGNATURE,
    export_model,
    load_exported,
    metadata,
    reference_energy_forces,
    save_exported,
)
from scalepool.testing import TOLERANCES

#: eV/Å, float32: the issue's bound on |F_exported - F_model|.
FORCE_ATOL = 1e-5
KINDS = ("short", "long", "muse", "mixed")

CLEAN_SCRIPT = """
import importlib.util, sys
sys.path.append({site!r})
assert importlib.util.find_spec("scalepool") is None, "scalepool is importable"
import numpy as np
import torch
data = np.load("inputs.npz")
out = {{}}
for kind in {kinds!r}:
    program = torch.export.load(kind + ".pt2").module()
    for case in ("full", "subset"):
        energy, forces = program(
            torch.tensor(data[case + "_positions"], dtype=torch.float32),
            torch.tensor(data[case + "_numbers"], dtype=torch.int64),
            torch.tensor(data["cell"], dtype=torch.float32),
            torch.ones(3, dtype=torch.bool),
        )
        out[kind + "_" + case + "_energy"] = energy.numpy()
        out[kind + "_" + case + "_forces"] = forces.numpy()
assert not any(name.startswith("scalepool") for name in sys.modules)
np.savez("outputs.npz", **out)
"""


def _subset(numbers: np.ndarray) -> np.ndarray:
    """The first 100 waters and every ion: another atom count, ions included."""
    ions = np.flatnonzero(np.isin(numbers, (11, 17)))
    return np.concatenate([np.arange(300), ions])


@pytest.fixture(scope="module")
def exported(nacl_frame, small_model, tmp_path_factory):
    positions, numbers, cell, _ = nacl_frame
    folder = tmp_path_factory.mktemp("exported")
    models = {}
    for kind in KINDS:
        model = small_model(kind)
        program = export_model(model, positions, numbers, cell)
        save_exported(program, folder / f"{kind}.pt2", metadata(model, torch.float32, "cpu", cell))
        models[kind] = model
    return folder, models


@pytest.mark.slow
def test_exported_models_run_without_scalepool_and_match(nacl_frame, exported):
    positions, numbers, cell, _ = nacl_frame
    folder, models = exported
    idx = _subset(numbers)
    cases = {"full": (positions, numbers), "subset": (positions[idx], numbers[idx])}
    np.savez(
        folder / "inputs.npz", cell=cell,
        **{f"{c}_{k}": v for c, (p, z) in cases.items() for k, v in (("positions", p), ("numbers", z))},
    )  # fmt: skip
    site = str(Path(torch.__file__).resolve().parents[1])
    script = folder / "run_clean.py"
    script.write_text(textwrap.dedent(CLEAN_SCRIPT.format(site=site, kinds=KINDS)))
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(script)], cwd=folder, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(folder / "outputs.npz")
    tol = TOLERANCES[torch.float32]
    for kind, model in models.items():
        for case, (p, z) in cases.items():
            ref_energy, ref_forces = reference_energy_forces(model, p, z, cell)
            forces = out[f"{kind}_{case}_forces"]
            assert forces.shape == (len(z), 3)
            assert float(ref_forces.abs().max()) > 0.05, f"{kind}: forces too small to test anything"
            np.testing.assert_allclose(
                forces, ref_forces.numpy(), rtol=0, atol=FORCE_ATOL, err_msg=f"{kind} {case}"
            )
            assert float(out[f"{kind}_{case}_energy"]) == pytest.approx(
                float(ref_energy), abs=tol["atol"], rel=tol["rtol"]
            ), f"{kind} {case}"


@pytest.mark.slow
def test_exported_file_records_what_it_is(exported):
    folder, _ = exported
    module, meta = load_exported(folder / "long.pt2")
    assert meta["signature"] == SIGNATURE
    assert meta["dtype"] == "float32"
    assert meta["model_config"]["class"] == "LongRangeBranch"


@pytest.mark.slow
def test_program_refuses_cells_it_was_not_built_for(nacl_frame, exported):
    positions, numbers, cell, _ = nacl_frame
    folder, _ = exported
    module, _ = load_exported(folder / "long.pt2")
    args = (torch.tensor(positions, dtype=torch.float32), torch.tensor(numbers))
    pbc = torch.ones(3, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="P3M/PME mesh"):  # 19 Å -> 40 Å: a 128^3 mesh, not 32^3
        module(*args, torch.tensor(cell * 2.1, dtype=torch.float32), pbc)
    with pytest.raises(RuntimeError, match="between opposite faces"):  # 6.5 Å < the 7.5 Å cutoff
        module(*args, torch.tensor(cell / 19.0 * 6.5, dtype=torch.float32), pbc)


def test_export_rejects_a_cell_smaller_than_the_cutoff(nacl_frame, small_model):
    positions, numbers, cell, _ = nacl_frame
    small = cell / 19.0 * 4.0  # 4 Å < the short branch's 4.5 Å cutoff
    with pytest.raises(ValueError, match="largest neighbour cutoff"):
        export_model(small_model("short"), positions[:9] % 4.0, numbers[:9], small)


def test_export_rejects_open_boundaries(nacl_frame, small_model):
    positions, numbers, _, _ = nacl_frame
    with pytest.raises(ValueError, match="periodic example frame"):
        export_model(small_model("short"), positions, numbers, None)


@pytest.mark.slow
def test_frozen_mesh_exports_and_holds_for_every_cell(nacl_frame, small_model):
    """A long branch whose P3M mesh is frozen (the NPT setting) exports with that mesh: the
    program gives the eager model's forces in the export cell and in a cell whose own mesh
    would be another size (a per-cell export refuses that cell)."""
    from torchpme.lib import get_ns_mesh

    from scalepool.models import LatentChargeEwald

    positions, numbers, cell, _ = nacl_frame
    model = small_model("long")
    (head,) = [m for m in model.modules() if isinstance(m, LatentChargeEwald)]
    shape = head.freeze_mesh(torch.tensor(cell))
    spacing = float(head.options["mesh_spacing"])
    scales = [s for s in np.linspace(0.9, 1.1, 41) if tuple(get_ns_mesh(torch.tensor(cell * s), spacing).tolist()) != shape]
    assert scales, "no cell within 10 % needs another mesh"
    stretched = float(min(scales, key=lambda s: abs(s - 1.0)))  # 19 Å: 64^3 per cell, 32^3 below 18.6 Å
    module = export_model(model, positions, numbers, cell).module()
    pbc = torch.ones(3, dtype=torch.bool)
    for s in (1.0, stretched):
        p, c = positions * s, cell * s
        energy, forces = module(torch.tensor(p, dtype=torch.float32), torch.tensor(numbers),
                                torch.tensor(c, dtype=torch.float32), pbc)  # fmt: skip
        ref_energy, ref_forces = reference_energy_forces(model, p, numbers, c)
        assert float(ref_forces.abs().max()) > 0.05
        np.testing.assert_allclose(forces.numpy(), ref_forces.numpy(), rtol=0, atol=FORCE_ATOL, err_msg=f"x{s}")
        tol = TOLERANCES[torch.float32]
        assert float(energy) == pytest.approx(float(ref_energy), abs=tol["atol"], rel=tol["rtol"])
    assert head.mesh_shape == shape  # export works on a copy
