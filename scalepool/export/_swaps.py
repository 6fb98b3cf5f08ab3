"""Traceable stand-ins for the parts of scalepool models that ``make_fx`` cannot follow.

Each swap computes the same numbers as the code it replaces (the export tests
compare energies and forces with the untouched model) and is installed on a
private deep copy of the model only:

- ``AtomsBatch.neighbors`` (vesin, numpy): :func:`torch_neighbor_list`; the
  atoms' list is searched once at the largest cutoff asked for and the others
  are cut from it;
- the fused edge kernels and the chunked edge pass (Python loops over chunks
  of a data-dependent edge count): the ``index_add`` aggregation and
  ``edge_chunk=0``, which the models document as giving the same numbers;
- :class:`LatentChargeEwald` (a Python loop over frames with ``.tolist()``):
  its one-frame body; the P3M/PME mesh size is read from the export cell and
  checked against the cell in the graph, or, for a head with a frozen mesh
  (``freeze_mesh``, ``mesh_shape``), is the frozen shape for every cell (the
  spacing then follows the cell, as in the eager model);
- :class:`MixedForceModel` router features (``bool(is_ion.any())`` and an
  empty-list branch): the same sums without the branches;
- :class:`SoftCoarseGraining` (MuSE): a check that a frame has at least two
  coarse nodes (anchor atoms), so the tracer can drop the no-node branch and
  autograd's one-row special cases.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from collections.abc import Iterator

import torch
import torchpme.calculators.pme as _pme_module
import torchpme.lib.mesh_interpolator as _mesh_module
from torch import nn
from torchpme.lib.kspace_filter import KSpaceFilter
from torchpme.lib.kvectors import get_ns_mesh

from ..models import AtomsBatch, ForceModel, LatentChargeEwald, MixedForceModel, SoftCoarseGraining
from ..units import ION_NUMBERS
from ._neighbors import cell_heights, torch_neighbor_list


class _Neighbors:
    """``AtomsBatch.neighbors`` during a trace: torch lists, the atoms' one searched once."""

    def __init__(self, atoms: AtomsBatch, pbc: torch.Tensor, atom_cutoff: float, record: list | None = None):
        self.atoms, self.pbc, self.atom_cutoff, self.record = atoms, pbc, atom_cutoff, record
        self.master = None

    def __call__(self, batch: AtomsBatch, cutoff: float, full_list: bool = True):
        is_atoms = batch.positions is self.atoms.positions
        if self.record is not None:
            self.record.append((float(cutoff), bool(full_list), is_atoms))
        cell = batch.cell[0]
        if self.record is not None or not is_atoms or cutoff > self.atom_cutoff:
            return torch_neighbor_list(batch.positions, cell, self.pbc, cutoff, full_list)
        if self.master is None:
            pairs, shifts = torch_neighbor_list(batch.positions, cell, self.pbc, self.atom_cutoff, True)
            with torch.no_grad():
                vectors = batch.edge_vectors(pairs, shifts).detach()
            self.master = pairs, shifts, vectors.square().sum(-1)
        pairs, shifts, d2 = self.master
        if cutoff == self.atom_cutoff and full_list:
            return pairs, shifts
        keep = d2 < cutoff * cutoff
        if not full_list:
            first = (shifts * torch.tensor([9, 3, 1], device=shifts.device)).sum(-1)
            i, j = pairs[:, 0], pairs[:, 1]
            keep = keep & ((i < j) | ((i == j) & (first > 0)))
        index = torch.nonzero(keep).squeeze(-1)
        return pairs[index], shifts[index]


class _FixedMesh(torch.Tensor):
    """A (3,) int64 mesh size whose items are Python ints, so torch-pme's
    ``fftfreq(ns[0])`` and ``int(ns[0])`` see constants while tracing; every
    other use sees the plain tensor ``self.plain``."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.__getitem__ and isinstance(args[1], int):
            return args[0].sizes[args[1]]
        plain = lambda a: a.plain if isinstance(a, _FixedMesh) else a  # noqa: E731
        args = [plain(a) for a in args]
        kwargs = {k: plain(v) for k, v in (kwargs or {}).items()}
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


def _fixed_mesh(ns: torch.Tensor) -> _FixedMesh:
    mesh = ns.clone().as_subclass(_FixedMesh)
    mesh.plain = ns.clone()
    mesh.sizes = tuple(int(n) for n in ns.tolist())
    return mesh


def _kspace_forward(self: KSpaceFilter, mesh_values: torch.Tensor) -> torch.Tensor:
    """torch-pme's ``KSpaceFilter.forward`` without its NaN check (a data-dependent
    branch); the mesh is fixed at export, where the eager pass ran that check."""
    dims = (1, 2, 3)
    mesh_hat = torch.fft.rfftn(mesh_values, norm=self._fft_norm, dim=dims)
    return torch.fft.irfftn(
        mesh_hat * self._kfilter, norm=self._ifft_norm, dim=dims, s=mesh_values.shape[-3:]
    )


def _symbolic_len(value):
    return value.shape[0] if isinstance(value, torch.Tensor) else len(value)


@contextlib.contextmanager
def _patched(neighbors: _Neighbors, meshes: dict[float, torch.Tensor]) -> Iterator[None]:
    original_neighbors, original_mesh = AtomsBatch.neighbors, _pme_module.get_ns_mesh
    original_filter = KSpaceFilter.forward

    def fixed_mesh(cell, mesh_spacing):
        return meshes[float(mesh_spacing)]

    AtomsBatch.neighbors = lambda batch, cutoff, full_list=True: neighbors(batch, cutoff, full_list)
    _pme_module.get_ns_mesh = fixed_mesh
    if neighbors.record is None:  # tracing: the eager (recording) pass keeps torch-pme's check
        KSpaceFilter.forward = _kspace_forward
        # len(positions) in MeshInterpolator.compute_weights would fix the atom count
        _mesh_module.len = _symbolic_len
    try:
        yield
    finally:
        KSpaceFilter.forward = original_filter
        if hasattr(_mesh_module, "len"):
            del _mesh_module.len
        AtomsBatch.neighbors = original_neighbors
        _pme_module.get_ns_mesh = original_mesh


def _one_frame_electrostatics(
    head: LatentChargeEwald, batch: AtomsBatch, scalar: torch.Tensor | None = None, mesh_key: float | None = None
):
    """``LatentChargeEwald.forward`` for one periodic frame: (n_atoms,) eV.

    mesh_key : for a head with a frozen mesh, the key of its shape in the patched
    ``get_ns_mesh`` (a negative number, never a real spacing)."""
    if head.fixed_charges:
        q = head.species_charges[batch.numbers].to(batch.positions.dtype)
    else:
        q = head.charge_head(scalar).squeeze(-1)
    q = q - q.mean()  # neutral, as LatentChargeEwald.charges
    pairs, shifts = batch.neighbors(head.real_space_cutoff, full_list=False)
    dist = torch.linalg.vector_norm(batch.edge_vectors(pairs, shifts), dim=-1)
    cell, pos = batch.cell[0], batch.positions
    # with a frozen mesh, the spacing is only the key of its shape, whatever the cell
    calculator = head._calculator(head.parameters_for(cell), pos.dtype, pos.device, spacing=mesh_key)
    potential = calculator(q.unsqueeze(-1), cell, pos, pairs, dist)
    return (q.unsqueeze(-1) * potential).squeeze(-1)


def _router_features(mixed: MixedForceModel, batch: AtomsBatch) -> torch.Tensor:
    """``smooth_router_features`` without data-dependent branches: (n_atoms, n_in)."""
    radii, width, species = mixed.radii, mixed.width, mixed.species
    n, pos = batch.n_atoms, batch.positions
    counts = pos.new_zeros((n, len(radii)))
    if radii:
        is_ion = torch.isin(batch.numbers, torch.as_tensor(ION_NUMBERS, device=pos.device))
        pairs, shifts = batch.neighbors(max(radii) + width)
        keep = torch.nonzero(is_ion[pairs[:, 1]]).squeeze(-1)
        pairs, shifts = pairs[keep], shifts[keep]
        distance = (batch.edge_vectors(pairs, shifts).square().sum(dim=-1) + 1e-12).sqrt()
        weights = []
        for r in radii:  # the C1 cosine switch of scalepool.models' router features
            x = ((distance - (r - width)) / (2.0 * width)).clamp(0.0, 1.0)
            weights.append(0.5 * (1.0 + torch.cos(math.pi * x)))
        counts = counts.index_add(0, pairs[:, 0], torch.stack(weights, dim=-1))
    onehot = (batch.numbers[:, None] == torch.as_tensor(species, device=pos.device)[None, :]).to(pos.dtype)
    return torch.cat([counts, onehot], dim=-1)


def _at_least_two_nodes(original):
    @functools.wraps(original)
    def forward(points, scalar=None):
        assignment = original(points, scalar)
        # lets the tracer drop the no-node branch and autograd's one-row special cases
        torch._check(assignment.seeds.shape[0] >= 2)
        return assignment

    return forward


def _index_add_aggregation(original):
    signature = inspect.signature(original)

    @functools.wraps(original)
    def forward(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.arguments["aggregation"] = "index_add"
        return original(*bound.args, **bound.kwargs)

    return forward


class Deployed(nn.Module):
    """A model with its swaps installed: ``forward(positions, numbers, cell, pbc) -> energy () eV``.

    Built by :func:`traceable_copy`; meant to be traced (``make_fx``), though
    it also runs eagerly.  ``atom_cutoff`` (Å): the cutoff of the one atom list
    the others are cut from; ``max_cutoff`` (Å): the largest neighbour cutoff
    the model asks for, which the program checks against the smallest cell
    height; ``meshes``: P3M/PME mesh size per mesh spacing, fixed at export (negative
    keys: frozen meshes, valid for every cell).
    """

    def __init__(
        self, model: ForceModel, atom_cutoff: float, max_cutoff: float, meshes: dict[float, torch.Tensor]
    ):
        super().__init__()
        self.model = model
        self.atom_cutoff, self.max_cutoff, self.meshes = atom_cutoff, max_cutoff, meshes
        self.record: list | None = None

    def forward(self, positions, numbers, cell, pbc) -> torch.Tensor:
        torch._assert_async(
            cell_heights(cell).min() >= self.max_cutoff,
            f"scalepool export: the cell must be at least {self.max_cutoff} Å between opposite faces "
            "(the largest neighbour cutoff of this model)",
        )
        for spacing, ns in self.meshes.items():
            if spacing < 0:  # a frozen mesh: the same shape for every cell
                continue
            torch._assert_async(
                (get_ns_mesh(cell, spacing) == torch.tensor(ns.sizes, device=cell.device)).all(),
                f"scalepool export: this cell needs another P3M/PME mesh than {list(ns.sizes)}, "
                "fixed at export; export again with a frame in this cell",
            )
        batch = AtomsBatch(positions, numbers, torch.zeros_like(numbers), cell.unsqueeze(0), 1)
        neighbors = _Neighbors(batch, pbc, self.atom_cutoff, self.record)
        with _patched(neighbors, self.meshes):
            return self.model.atomic_energies(batch).sum()


def traceable_copy(model: ForceModel, example: tuple[torch.Tensor, ...]) -> Deployed:
    """Install the swaps on ``model`` (changed in place: pass a deep copy) and wrap it.

    example : (positions (N, 3) Å, numbers (N,), cell (3, 3) Å, pbc (3,) bool), the
    frame that fixes the P3M/PME mesh and finds the cutoffs the model asks for.
    """
    cell = example[2]
    meshes: dict[float, torch.Tensor] = {}
    for module in list(model.modules()):
        if isinstance(getattr(module, "aggregation", None), str):
            module.aggregation = "index_add"
        if isinstance(getattr(module, "edge_chunk", None), int):
            module.edge_chunk = 0  # chunk loops over a data-dependent edge count; 0 never chunks
        forward = getattr(module, "forward", None)
        if forward is not None and "aggregation" in inspect.signature(forward).parameters:
            module.forward = _index_add_aggregation(forward)
        if isinstance(module, LatentChargeEwald):
            if module.options["tune"]:
                raise ValueError(
                    "an electrostatics head with tune=True cannot be exported; use fixed parameters"
                )
            mesh_key = None
            if module.method in ("p3m", "pme"):
                if module.mesh_shape is not None:
                    mesh_key = -1.0 - len(meshes)
                    meshes[mesh_key] = _fixed_mesh(torch.tensor(module.mesh_shape, device=cell.device))
                else:
                    spacing = float(module.options["mesh_spacing"])
                    meshes[spacing] = _fixed_mesh(get_ns_mesh(cell.detach(), spacing))
            module.forward = functools.partial(_one_frame_electrostatics, module, mesh_key=mesh_key)
        if isinstance(module, SoftCoarseGraining):
            module.forward = _at_least_two_nodes(module.forward)
        if isinstance(module, MixedForceModel):
            module.features = functools.partial(_router_features, module)
    deployed = Deployed(model, atom_cutoff=math.inf, max_cutoff=0.0, meshes=meshes)
    # one eager pass finds the cutoffs asked for (vesin-free, so also a smoke test of the swaps)
    deployed.record = []
    with torch.no_grad():
        deployed(*example)
    calls, deployed.record = deployed.record, None
    if not calls:
        raise ValueError(f"{type(model).__name__} asked for no neighbour list: nothing to export")
    deployed.atom_cutoff = max(c for c, _, on_atoms in calls if on_atoms)
    deployed.max_cutoff = max(c for c, _, _ in calls)
    heights = cell_heights(cell.double())
    if float(heights.min()) < deployed.max_cutoff:
        raise ValueError(
            f"the example cell is {float(heights.min()):.2f} Å between its closest faces, less than the "
            f"largest neighbour cutoff {deployed.max_cutoff} Å of this model: use a larger cell"
        )
    return deployed
