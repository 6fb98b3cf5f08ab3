"""Long-range electrostatics head: latent (or fixed) charges summed with torch-pme.

Per-atom charges ``q_i`` (units of e) are predicted from backbone scalar
features, or taken from a per-species table (``fixed_charges=True``), then
projected to a neutral frame by subtracting the frame mean.  torch-pme returns
per-atom potentials ``V_i = 1/2 sum_j q_j v(r_ij)`` (the 1/2 for double
counting is inside ``V``), so the per-atom energy is ``q_i V_i`` and the frame
energy ``sum_i q_i V_i``, in eV with the prefactor ``e^2 / (4 pi eps0)`` in eV Å.
The real-space part reads a half neighbour list (each pair once).

The real-space pair term ``erfc(r / (sqrt2 sigma)) / r`` is multiplied by a C2
switch that goes from 1 at ``real_space_cutoff - switch_width`` to 0 at
``real_space_cutoff`` (:class:`SwitchedCoulombPotential`), so energy, forces
and the Hessian are continuous when a pair crosses the cutoff.  (A hard cutoff
at 6 Å with smearing 1.4 Å made a Na-Cl pair jump by ~4e-5 eV and ~1e-4 eV/Å.)
The switch only drops the erfc tail that a hard cutoff at the switch's start
would drop entirely, so it is more accurate than that hard cutoff.

Ewald parameters are fixed by default, chosen once for water density: P3M
with smearing 1.4 Å, mesh spacing 1.2 Å, 4 interpolation nodes and a real-space
switch from 6 to 7 Å reproduced a converged PME reference on a 1,530-atom, 25 Å
water box with TIP3P/ion charges to 0.11 meV/Å force RMSE (0.9 meV/Å max; all
of it mesh error) and 2 µeV/atom energy, in ~50 ms on one CPU core.  (A hard
6 Å cutoff: 0.13 meV/Å, 8 µeV/atom, ~40 ms; torch-pme's ``tune_p3m`` at
accuracy 1e-3 picked smearing 1.86 Å and a 32^3 mesh: 3.2 meV/Å RMSE,
-0.8 meV/atom, and took 17-30 s.)  The settings depend on density and charge
magnitudes, not on the box size.  ``tune=True`` instead runs torch-pme's tuner
once per cell shape (cache keyed by the cell rounded to 0.01 Å).

Memory: a frame with more real-space pairs than ``edge_chunk`` (default
262,144; 1.27M at 17.6k atoms, 98k on the 1,467-atom testbed) sums its
real-space term itself, in chunks through
:func:`~scalepool.models._edge_chunks.chunked_edge_sum` with the potential's own
``sr_from_dist`` kernel, keeping only int32 pair ends and int8 shifts for
backward, and asks torch-pme for the k-space, self and background terms alone
(an empty pair list).  Same numbers to float64 round-off, exact double backward.

Mesh: P3M/PME pick ``2^ceil(log2(2 L / h + 1))`` mesh points per axis for each
cell, so the energy jumps where a changing box crosses such a size (NPT).
:meth:`LatentChargeEwald.freeze_mesh` (or ``mesh_shape=``) keeps the number of
points fixed whatever the cell; :class:`~scalepool.md.ScalepoolCalculator`
with ``molecules`` freezes it at the first cell it computes.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torchpme
from ase.data import atomic_numbers, chemical_symbols
from torch import nn

from .. import units
from ._batch import AtomsBatch
from ._edge_chunks import DEFAULT_EDGE_CHUNK, chunked_edge_sum, edge_chunk_size
from ._radial import MLP
from ._scatter import scatter_sum

#: Point charges of the NaCl testbed force field (TIP3P water, Joung-Cheatham ions), e.
TESTBED_CHARGES = {"O": -0.834, "H": 0.417, "Na": 1.0, "Cl": -1.0}
METHODS = ("p3m", "pme", "ewald")
#: Fixed Ewald parameters for water density (see the module docstring).
DEFAULT_SMEARING = 1.4  # Å
DEFAULT_MESH_SPACING = 1.2  # Å
DEFAULT_INTERPOLATION_NODES = 4
DEFAULT_REAL_SPACE_CUTOFF = 7.0  # Å
#: Width of the real-space switch: it starts at 6 Å, where erfc(r / (sqrt2 sigma)) / r
#: is 2.7e-6 / Å, and ends at the cutoff.
DEFAULT_SWITCH_WIDTH = 1.0  # Å


def _charge_table(charges: dict[str, float] | None) -> dict[str, float]:
    """Normalise ``{symbol or Z: charge}`` to ``{symbol: charge}`` (JSON-able)."""
    table = {}
    for key, value in (charges or TESTBED_CHARGES).items():
        symbol = chemical_symbols[int(key)] if str(key).isdigit() else str(key)
        if symbol not in atomic_numbers:
            raise ValueError(f"unknown element {key!r} in charge table")
        table[symbol] = float(value)
    return table


def quintic_switch(r: torch.Tensor, start: float, stop: float) -> torch.Tensor:
    """Quintic switch ``1 - t^3 (10 - 15 t + 6 t^2)``, ``t = (r - start) / (stop - start)``.

    r : (n,) Å -> (n,): 1 up to ``start``, 0 from ``stop`` on, with zero first
    and second derivatives at both ends (C2).
    """
    t = ((r - start) / (stop - start)).clamp(0.0, 1.0)
    return 1.0 - t**3 * (10.0 + t * (6.0 * t - 15.0))


class SwitchedCoulombPotential(torchpme.CoulombPotential):
    """Ewald-split ``1/r`` whose real-space part goes smoothly to zero at ``cutoff``.

    Real-space pair kernel ``prefactor * erfc(r / (sqrt2 sigma)) / r * s(r)``,
    ``s`` the :func:`quintic_switch` from ``cutoff - switch_width`` to
    ``cutoff`` (Å); the reciprocal part, self and background terms are
    torch-pme's Gaussian ones, unchanged.  The switch therefore drops
    ``erfc(r / (sqrt2 sigma)) / r * (1 - s(r))`` from each pair beyond the
    switch's start, a tail that a hard cutoff there would drop whole.
    ``switch_width = 0`` is the hard cutoff (energy and forces then jump when a
    pair crosses it).  With an ``exclusion_radius`` torch-pme's real-space term
    lives inside that radius only, and is left as it is.
    """

    def __init__(
        self,
        smearing: float,
        cutoff: float,
        switch_width: float,
        exclusion_radius: float | None = None,
        prefactor: float = 1.0,
    ):
        super().__init__(smearing=smearing, exclusion_radius=exclusion_radius, prefactor=prefactor)
        if not 0.0 <= switch_width < cutoff:
            raise ValueError(f"switch_width must lie in [0, cutoff = {cutoff}) Å, got {switch_width}")
        self.cutoff = float(cutoff)
        self.switch_start = float(cutoff - switch_width)

    def sr_from_dist(self, dist: torch.Tensor, pair_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Real-space kernel (n_pairs,) at distances ``dist`` (n_pairs,) Å; eV per e^2."""
        if self.exclusion_radius is not None or self.switch_start == self.cutoff:
            return super().sr_from_dist(dist, pair_mask)
        # erfc directly rather than 1/r - erf/r: no cancellation in the tail.
        result = torch.erfc(dist / (self.smearing * 2.0**0.5)) / dist.clamp(min=1e-12)
        result = result * quintic_switch(dist, self.switch_start, self.cutoff)
        if pair_mask is not None:
            result = result * pair_mask
        return self.prefactor * result


def _smooth_sinc(x: torch.Tensor) -> torch.Tensor:
    """sin(pi x) / (pi x) with derivatives of every order finite at x = 0.

    ``torch.sinc``'s double backward at 0 is NaN; below |x| = 1e-3 the Taylor series
    to x^6 is exact to float64 round-off (next term ~ (pi x)^8 / 9! < 3e-25).
    """
    small = x.abs() < 1e-3
    px = torch.pi * torch.where(small, torch.ones_like(x), x)
    u = (torch.pi * torch.where(small, x, torch.zeros_like(x))) ** 2
    series = 1 - u / 6 + u**2 / 120 - u**3 / 5040
    return torch.where(small, series, torch.sin(px) / px)


def _smooth_k_space(kspace_filter) -> None:
    """Make a torch-pme P3M/PME k-space filter twice differentiable at k = 0.

    torch-pme computes ``|k|^2`` as ``linalg.norm(k) ** 2``, the P3M charge
    assignment with ``torch.sinc`` and the P3M influence function with
    ``linalg.norm(D) ** (4 mode)``: at the k = 0 mesh point each has a NaN second
    derivative (0/0 in the backward).  Forces and stress need only the first
    derivative, but a stress loss back-propagates the stress (itself a cell
    derivative) to the weights: that double backward turned every weight
    gradient of the long branch into NaN.  The subclass computes the same
    numbers with sums of squares and a series-guarded sinc.  The filter's class
    is swapped for the subclass (same state, same buffers).
    """
    base = type(kspace_filter)

    class SmoothKSpaceFilter(base):
        def _prep_kvectors(self, cell, ns_mesh):
            super()._prep_kvectors(cell, ns_mesh)
            if cell is not None or ns_mesh is not None:
                self._k_sq = self._kvectors.square().sum(dim=3)

        if hasattr(base, "_charge_assignment"):  # P3M: its own influence function

            def _charge_assignment(self, kh):
                return torch.prod(_smooth_sinc(kh / (2 * torch.pi)), dim=-1) ** (self.interpolation_nodes * 2)

            def _compute_influence(self, kvectors):
                # the influence function of Hockney-Eastwood P3M (Deserno & Holm 1998, eq. 31,
                # torch-pme's P3MKSpaceFilter) with |D|^(4 mode) written as (D.D)^(2 mode)
                spacing = (torch.linalg.norm(self.cell, dim=1) / self.ns_mesh).reshape(1, 1, 1, 3)
                kh = kvectors * spacing
                u2 = self._charge_assignment(kh)
                if self.mode == 0:
                    masked = torch.where(u2 == 0, 1.0, u2)
                    return torch.where(u2 == 0, 0.0, torch.reciprocal(masked))
                d = self._differential_operator(kh, spacing)
                numerator = torch.sum(kvectors * d, dim=-1) ** self.mode
                denominator = u2 * d.square().sum(dim=-1) ** (2 * self.mode)
                masked = torch.where(denominator == 0, 1.0, denominator)
                return torch.where(denominator == 0, 0.0, numerator / masked)

    SmoothKSpaceFilter.__name__ = SmoothKSpaceFilter.__qualname__ = f"Smooth{base.__name__}"
    kspace_filter.__class__ = SmoothKSpaceFilter


class LatentChargeEwald(nn.Module):
    """Per-atom electrostatic energies ``q_i V_i`` (eV) of neutral charges.

    Parameters
    ----------
    n_features : width of the scalar features the charges are predicted from
    fixed_charges : True takes charges from ``charges`` (a frozen buffer);
        False predicts them with a small MLP on the features
    charges : ``{element symbol or Z: charge in e}``; defaults to the testbed
        force field (O -0.834, H +0.417, Na +1, Cl -1); used when fixed
    method : ``"p3m"`` (default), ``"pme"`` or ``"ewald"`` (small cells only)
    smearing : Å, Gaussian width splitting real and reciprocal space
    mesh_spacing : Å, P3M/PME mesh resolution
    interpolation_nodes : P3M/PME interpolation order
    lr_wavelength : Å, Ewald reciprocal cutoff ``2 pi / k_max`` (default ``smearing / 2``)
    real_space_cutoff : Å, neighbour cutoff of the real-space sum; its erfc term
        is switched off smoothly over the last ``switch_width`` Å before it
    switch_width : Å, width of that C2 switch (0: a hard, discontinuous cutoff)
    exclusion_radius : Å or None (at most ``real_space_cutoff``); torch-pme then
        smoothly removes the interaction inside this radius (left to the
        short-range model)
    tune : run torch-pme's tuner once per cell shape instead of the fixed values
    accuracy : target of the tuner
    edge_chunk : frames with more real-space pairs than this (default 262,144)
        sum the real-space term in chunks of at most 8,192 pairs, recomputed in
        backward (:func:`~scalepool.models._edge_chunks.chunked_edge_sum`): the
        same numbers to round-off, exact forces, stress and force-loss
        gradients, memory linear in atoms; ``0`` never chunks
    mesh_shape : ``(nx, ny, nz)`` powers of two, or None; P3M/PME then keep
        this many mesh points per axis whatever the cell (see :meth:`freeze_mesh`)
    """

    def __init__(
        self,
        n_features: int = 64,
        fixed_charges: bool = False,
        charges: dict[str, float] | None = None,
        method: str = "p3m",
        smearing: float = DEFAULT_SMEARING,
        mesh_spacing: float = DEFAULT_MESH_SPACING,
        interpolation_nodes: int = DEFAULT_INTERPOLATION_NODES,
        lr_wavelength: float | None = None,
        real_space_cutoff: float = DEFAULT_REAL_SPACE_CUTOFF,
        switch_width: float = DEFAULT_SWITCH_WIDTH,
        exclusion_radius: float | None = None,
        tune: bool = False,
        accuracy: float = 1e-3,
        edge_chunk: int = DEFAULT_EDGE_CHUNK,
        mesh_shape: tuple[int, int, int] | None = None,
    ):
        super().__init__()
        if isinstance(edge_chunk, bool) or not isinstance(edge_chunk, int) or edge_chunk < 0:
            raise ValueError(f"edge_chunk must be a non-negative whole number of pairs, got {edge_chunk!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        for name, value in (("smearing", smearing), ("mesh_spacing", mesh_spacing)):
            if not value > 0:
                raise ValueError(f"{name} must be positive (Å), got {value}")
        if not real_space_cutoff > 0:
            raise ValueError(f"real_space_cutoff must be positive (Å), got {real_space_cutoff}")
        if not 0 <= switch_width < real_space_cutoff:
            raise ValueError(
                f"switch_width must lie in [0, real_space_cutoff = {real_space_cutoff}) Å, got {switch_width}"
            )
        if exclusion_radius is not None and not 0 < exclusion_radius <= real_space_cutoff:
            # pairs inside the exclusion radius must all be in the neighbour list
            raise ValueError(
                f"exclusion_radius must lie in (0, real_space_cutoff = {real_space_cutoff}] Å, "
                f"got {exclusion_radius}"
            )
        table = _charge_table(charges)
        self.options: dict[str, Any] = dict(
            fixed_charges=bool(fixed_charges),
            charges=table,
            method=method,
            smearing=float(smearing),
            mesh_spacing=float(mesh_spacing),
            interpolation_nodes=int(interpolation_nodes),
            lr_wavelength=None if lr_wavelength is None else float(lr_wavelength),
            real_space_cutoff=float(real_space_cutoff),
            switch_width=float(switch_width),
            exclusion_radius=None if exclusion_radius is None else float(exclusion_radius),
            tune=bool(tune),
            accuracy=float(accuracy),
            edge_chunk=int(edge_chunk),
            mesh_shape=None,
        )
        self.fixed_charges = bool(fixed_charges)
        self.method = method
        self.real_space_cutoff = float(real_space_cutoff)
        self.switch_width = float(switch_width)
        per_species = torch.zeros(119)
        for symbol, value in table.items():
            per_species[atomic_numbers[symbol]] = value
        self.register_buffer("species_charges", per_species)
        if self.fixed_charges:
            self.charge_head = None
        else:
            self.charge_head = MLP(n_features, max(n_features // 2, 1), 1)
            last = self.charge_head[-1]
            nn.init.normal_(last.weight, std=0.1 / math.sqrt(last.in_features))
            nn.init.zeros_(last.bias)
        self._calculators: dict[tuple, torchpme.Calculator] = {}
        self._tuned: dict[tuple, dict[str, float]] = {}
        if mesh_shape is not None:
            self.freeze_mesh(shape=mesh_shape)

    # ---------------------------------------------------------------- charges
    def charges(self, batch: AtomsBatch, scalar: torch.Tensor | None = None) -> torch.Tensor:
        """Neutral per-atom charges (n_atoms,), e; ``scalar`` : (n_atoms, F) features."""
        if self.fixed_charges:
            q = self.species_charges[batch.numbers].to(batch.positions.dtype)
        else:
            if scalar is None:
                raise ValueError("latent charges need the backbone's scalar features (n_atoms, F)")
            q = self.charge_head(scalar).squeeze(-1)
        total = scatter_sum(q, batch.frame_index, batch.n_frames)
        count = torch.bincount(batch.frame_index, minlength=batch.n_frames).to(q.dtype)
        return q - (total / count)[batch.frame_index]

    # ------------------------------------------------------------- parameters
    def parameters_for(self, cell: torch.Tensor, charges=None, positions=None) -> dict[str, float]:
        """Ewald parameters for one cell (3, 3): the fixed ones, or tuned and cached."""
        opts = self.options
        fixed = {
            "smearing": opts["smearing"],
            "mesh_spacing": opts["mesh_spacing"],
            "interpolation_nodes": opts["interpolation_nodes"],
            "lr_wavelength": opts["lr_wavelength"] or opts["smearing"] / 2,
        }
        if not opts["tune"]:
            return fixed
        key = (self.method, *torch.round(cell.detach().double() * 100).long().flatten().tolist())
        if key not in self._tuned:
            self._tuned[key] = self._run_tuner(cell, charges, positions, fixed)
        return self._tuned[key]

    def _run_tuner(self, cell, charges, positions, fixed) -> dict[str, float]:
        from torchpme import tuning

        # The tuner assumes a hard cutoff; tune for one where the switch starts,
        # since the switch already drops part of the erfc tail from there on.
        rc = self.real_space_cutoff - self.switch_width
        cell64, pos64 = cell.detach().double(), positions.detach().double()
        q = charges.detach().double().reshape(-1, 1)
        if float((q * q).sum()) < 1e-12:
            q = torch.ones_like(q)
            q[1::2] = -1.0
        from ..neighbors import neighbor_pairs

        pairs, shifts = neighbor_pairs(pos64.numpy(), rc, cell64.numpy(), full_list=False)
        pairs = torch.as_tensor(pairs)
        dist = torch.linalg.vector_norm(
            pos64[pairs[:, 1]] - pos64[pairs[:, 0]] + torch.as_tensor(shifts, dtype=torch.float64) @ cell64,
            dim=-1,
        )
        tuner = {"p3m": tuning.tune_p3m, "pme": tuning.tune_pme, "ewald": tuning.tune_ewald}[self.method]
        extra = {}
        if self.method != "ewald":
            # Meshes finer than ~0.5 Å never pay at these accuracies, and the
            # tuner times every candidate: cap the search (2^k points per axis).
            shortest = float(torch.linalg.vector_norm(cell64, dim=1).min())
            extra["mesh_hi"] = max(3, min(7, int(math.floor(math.log2(4 * shortest + 1)))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            smearing, params, _ = tuner(
                q, cell64, pos64, rc, pairs, dist,
                prefactor=units.COULOMB_EV_ANGSTROM, accuracy=self.options["accuracy"], **extra,
            )  # fmt: skip
        return {**fixed, "smearing": float(smearing), **{k: float(v) for k, v in params.items()}}

    def _calculator(
        self, params: dict[str, float], dtype, device, cell=None, spacing: float | None = None
    ) -> torchpme.Calculator:
        """The torch-pme calculator for ``params``; with a frozen mesh its spacing is set for
        ``cell`` (3, 3) Å, or to ``spacing`` when given (the exported program's key of the shape)."""
        shape = self.mesh_shape if self.method != "ewald" else None
        if shape is not None:
            params = {**params, "mesh_spacing": 0.0}  # one calculator for every cell
        key = (self.method, tuple(sorted(params.items())), shape, dtype, str(device))
        calc = self._calculators.get(key)
        if calc is None:
            potential = SwitchedCoulombPotential(
                smearing=params["smearing"],
                cutoff=self.real_space_cutoff,
                switch_width=self.switch_width,
                exclusion_radius=self.options["exclusion_radius"],
                prefactor=units.COULOMB_EV_ANGSTROM,
            )
            if self.method == "ewald":
                calc = torchpme.EwaldCalculator(potential, lr_wavelength=params["lr_wavelength"])
            else:
                cls = torchpme.P3MCalculator if self.method == "p3m" else torchpme.PMECalculator
                calc = cls(
                    potential,
                    mesh_spacing=params["mesh_spacing"],
                    interpolation_nodes=int(params["interpolation_nodes"]),
                )
                _smooth_k_space(calc.kspace_filter)
            calc = calc.to(device=device, dtype=dtype)
            self._calculators[key] = calc
        if shape is not None:
            if spacing is not None:
                calc.mesh_spacing = spacing
            elif cell is None:
                raise ValueError("a frozen mesh needs the frame's cell")
            else:
                calc.mesh_spacing = mesh_spacing_for_shape(cell, shape)
        return calc

    # ------------------------------------------------------------------ mesh
    @property
    def mesh_shape(self) -> tuple[int, int, int] | None:
        """Mesh points per axis kept fixed for every cell (P3M/PME), or None (chosen per cell)."""
        shape = self.options["mesh_shape"]
        return None if shape is None else tuple(shape)

    def freeze_mesh(
        self, cell: torch.Tensor | None = None, shape: tuple[int, int, int] | None = None
    ) -> tuple[int, int, int] | None:
        """Keep the P3M/PME mesh at a fixed number of points per axis from now on.

        By default the mesh has ``2^ceil(log2(2 L / h + 1))`` points along a
        cell vector of length ``L`` (torch-pme's rule, ``h`` the mesh spacing),
        so the energy jumps when a box under NPT crosses such a boundary (e.g.
        9.0 -> 9.13 Å at ``h = 1.2`` Å).  Frozen, the mesh keeps ``shape``
        points whatever the cell: its spacing ``L / n`` then changes smoothly
        with the cell and so does the energy (the stress stays ``dE/d strain``).

        cell : (3, 3) Å, rows are cell vectors: freeze the mesh this cell gets
            now (the usual call: the first cell of an NPT run)
        shape : ``(nx, ny, nz)`` powers of two (>= 2) instead of a cell
        Neither: unfreeze (the mesh is chosen per cell again).  Returns the shape.
        """
        if cell is not None and shape is not None:
            raise ValueError("freeze_mesh takes a cell or a shape, not both")
        if cell is None and shape is None:
            self.options["mesh_shape"] = None
            return None
        if self.method == "ewald":
            raise ValueError("freeze_mesh needs a mesh method (p3m or pme); this head uses ewald")
        if cell is not None:
            cell = torch.as_tensor(cell).detach().double().reshape(-1, 3)
            if cell.shape != (3, 3) or not torch.isfinite(cell).all():
                raise ValueError(
                    f"freeze_mesh: cell must be a finite (3, 3) tensor in Å, got {tuple(cell.shape)}"
                )
            spacing = self.parameters_for(cell)["mesh_spacing"]
            shape = tuple(int(n) for n in torchpme.lib.get_ns_mesh(cell, spacing).tolist())
        shape = tuple(int(n) for n in shape)
        if len(shape) != 3 or any(n < 2 or n & (n - 1) for n in shape):
            raise ValueError(f"mesh_shape must be three powers of two >= 2, got {shape}")
        self.options["mesh_shape"] = list(shape)
        return shape

    # ----------------------------------------------------------------- energy
    def forward(self, batch: AtomsBatch, scalar: torch.Tensor | None = None) -> torch.Tensor:
        """Per-atom electrostatic energies ``q_i V_i`` (n_atoms,), eV.

        Periodic frames use the chosen Ewald method; open frames (``cell`` is
        None) a direct sum over all pairs.  Differentiable in positions, cell
        and (latent) charges.  A periodic frame with more real-space pairs than
        ``edge_chunk`` sums its real-space term in chunks (:meth:`_chunked_real_space`)
        and asks torch-pme for the k-space part alone.
        """
        q = self.charges(batch, scalar)
        pos, dtype = batch.positions, batch.positions.dtype
        counts = torch.bincount(batch.frame_index, minlength=batch.n_frames).tolist()
        offsets = [0]
        for c in counts:
            offsets.append(offsets[-1] + c)
        if batch.cell is None:
            pairs = torch.cat(
                [
                    torch.triu_indices(c, c, 1, device=pos.device).T + lo
                    for c, lo in zip(counts, offsets[:-1], strict=True)
                ]
            )
            shifts = torch.zeros_like(pairs[:, :1]).expand(-1, 3)
        else:
            pairs, shifts = batch.neighbors(self.real_space_cutoff, full_list=False)
        pair_frame = batch.frame_index[pairs[:, 0]]
        bounds = torch.searchsorted(pair_frame, torch.arange(batch.n_frames + 1, device=pos.device)).tolist()
        del pair_frame
        edge_chunk = self.options.get("edge_chunk", DEFAULT_EDGE_CHUNK)
        chunks = [
            edge_chunk_size(bounds[f + 1] - bounds[f], edge_chunk) if batch.cell is not None else 0
            for f in range(batch.n_frames)
        ]
        dist, compact = None, {}
        if all(chunks):
            # Keep each frame's pairs compact (int32 ends, int8 shifts) and free the int64
            # list before the k-space part allocates its mesh.
            compact = {f: _compact_pairs(pairs[bounds[f] : bounds[f + 1]], shifts[bounds[f] : bounds[f + 1]], offsets[f])
                       for f in range(batch.n_frames)}  # fmt: skip
            del pairs, shifts
        else:  # the old path (for the frames that are not chunked)
            dist = torch.linalg.vector_norm(batch.edge_vectors(pairs, shifts), dim=-1)
        energies = []
        for f in range(batch.n_frames):
            lo, hi, plo, phi = offsets[f], offsets[f + 1], bounds[f], bounds[f + 1]
            q_f = q[lo:hi].unsqueeze(-1)
            if batch.cell is None:
                calc = self._direct_calculator(dtype, pos.device)
                cell = torch.zeros(3, 3, dtype=dtype, device=pos.device)
            else:
                cell = batch.cell[f]
                calc = self._calculator(self.parameters_for(cell, q_f, pos[lo:hi]), dtype, pos.device, cell)
            if chunks[f]:
                # k-space, self and background terms alone: torch-pme with no pairs.
                none = torch.zeros((0, 2), dtype=torch.long, device=pos.device)
                potential = calc(q_f, cell, pos[lo:hi], none, pos.new_zeros(0))
                first, second, frame_shifts = (
                    compact.pop(f) if compact else _compact_pairs(pairs[plo:phi], shifts[plo:phi], lo)
                )
                real = self._chunked_real_space(
                    calc.potential, q[lo:hi], pos[lo:hi], cell, first, second, frame_shifts, chunks[f]
                )
                potential = potential + real.unsqueeze(-1)
            else:
                potential = calc(q_f, cell, pos[lo:hi], pairs[plo:phi] - lo, dist[plo:phi])
            energies.append((q_f * potential).squeeze(-1))
        return torch.cat(energies)

    @staticmethod
    def _chunked_real_space(
        potential: torchpme.CoulombPotential,
        q: torch.Tensor,
        positions: torch.Tensor,
        cell: torch.Tensor,
        first: torch.Tensor,
        second: torch.Tensor,
        shifts: torch.Tensor,
        chunk: int,
    ) -> torch.Tensor:
        """Real-space potential ``V_i = 1/2 sum_j q_j v(r_ij)`` (n,) of one frame, in chunks.

        potential : its ``sr_from_dist`` is the pair kernel v (eV per e^2);
        q : (n,) e; positions : (n, 3) Å; cell : (3, 3) Å, rows;
        first, second : (P,) integer atom indices of a half list (each pair once);
        shifts : (P, 3) integer cell shifts, ``r_ij = x_j - x_i + shifts @ cell``.
        Each pair adds ``q_j v / 2`` to atom i and ``q_i v / 2`` to atom j, as
        torch-pme's ``_compute_rspace`` does; no per-pair tensor is kept for
        backward (recomputed per chunk).
        """
        on_first, on_second = chunked_edge_sum(
            _RealSpacePairs(potential),
            [cell],
            [(q, second), (q, first), (positions, first), (positions, second)],
            [shifts],
            (first, second),
            q.shape[0],
            chunk,
        )
        return (on_first + on_second) / 2

    def _direct_calculator(self, dtype, device) -> torchpme.Calculator:
        key = ("direct", dtype, str(device))
        if key not in self._calculators:
            potential = torchpme.CoulombPotential(prefactor=units.COULOMB_EV_ANGSTROM)
            self._calculators[key] = torchpme.Calculator(potential).to(device=device, dtype=dtype)
        return self._calculators[key]

    def __getstate__(self):
        # Calculators are rebuilt on demand; they hold cell-dependent tensors
        # that may belong to an autograd graph, which cannot be copied.
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__
        return {**state, "_calculators": {}}

    def extra_repr(self) -> str:
        o = self.options
        return (
            f"method={o['method']}, fixed_charges={o['fixed_charges']}, smearing={o['smearing']}, "
            f"real_space_cutoff={o['real_space_cutoff']}, switch_width={o['switch_width']}"
        )


def _compact_pairs(pairs: torch.Tensor, shifts: torch.Tensor, lo: int):
    """One frame's half list (P, 2) int64 global indices and shifts (P, 3) int64 ->
    (first (P,), second (P,)) frame-local indices, int32 when they fit, and shifts
    as int8 when they fit (8x less to keep for backward than int64)."""
    n_max = int(pairs.max()) - lo + 1 if pairs.numel() else 0
    index_dtype = torch.int32 if n_max < 2**31 else torch.long
    first = (pairs[:, 0] - lo).to(index_dtype)
    second = (pairs[:, 1] - lo).to(index_dtype)
    small = shifts.numel() == 0 or int(shifts.abs().max()) < 128
    return first, second, shifts.to(torch.int8) if small else shifts.clone()


class _RealSpacePairs:
    """Per-pair real-space messages of one chunk, for :func:`chunked_edge_sum`.

    Called with the cell (3, 3) Å, q_j and q_i (P_c,) e, x_i and x_j (P_c, 3) Å
    and the integer shifts (P_c, 3); returns ``(q_j v(r_ij), q_i v(r_ij))``,
    (P_c,) each, summed onto i and j.  Holds the potential (constants only).
    """

    def __init__(self, potential: torchpme.CoulombPotential):
        self.potential = potential

    def __call__(self, cell, q_j, q_i, x_i, x_j, shifts):
        vectors = x_j - x_i + shifts.to(x_i.dtype) @ cell
        v = self.potential.sr_from_dist(torch.linalg.vector_norm(vectors, dim=-1))
        return q_j * v, q_i * v


def mesh_spacing_for_shape(cell: torch.Tensor, shape: tuple[int, int, int]) -> float:
    """A mesh spacing (Å) for which torch-pme gives ``cell`` (3, 3) Å exactly ``shape`` mesh points.

    torch-pme takes ``n_a = 2^ceil(log2(2 L_a / h + 1))`` points along a cell
    vector of length ``L_a``; ``n_a = 2^k`` holds for
    ``2 L_a / (2^k - 1) <= h < 2 L_a / (2^(k-1) - 1)``.  The spacing returned is
    the geometric middle of the range all three axes allow; a clear error when
    the cell's axes are too unequal for one spacing to fit all three.
    """
    lengths = torch.linalg.vector_norm(cell.detach().double(), dim=1).tolist()
    lo = max(2 * L / (n - 1) for L, n in zip(lengths, shape, strict=True))
    his = [2 * L / (n // 2 - 1) for L, n in zip(lengths, shape, strict=True) if n > 2]
    hi = min(his) if his else 4 * lo
    if not lo < hi:
        raise ValueError(
            f"frozen mesh {tuple(shape)} does not fit cell lengths {[round(L, 3) for L in lengths]} Å "
            "(its axes changed too unequally); freeze the mesh again for this cell"
        )
    spacing = math.sqrt(lo * hi)
    got = tuple(torchpme.lib.get_ns_mesh(cell.detach(), spacing).tolist())
    if got != tuple(shape):  # only at round-off of the bounds
        raise ValueError(f"frozen mesh {tuple(shape)}: spacing {spacing} Å gives {got} for this cell")
    return spacing
