"""Stand-ins shared by the training, prediction and deployable tests: a small learnable pair
potential with the ForceModel interface, synthetic frames it labels, and a training run helper.

``install_standin_io`` routes training's model I/O (``scalepool.train._model_io``)
to the stand-in, so tests run in seconds without the real branches.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch
from torch import nn

from scalepool.data import FrameSet
from scalepool.train import _model_io, train

SPECIES = (1, 8, 11, 17)
FRACTIONS = (0.6, 0.2, 0.2)
EPOCHS = 3


# ------------------------------------------------------------------ stand-in model
class PairModel(nn.Module):
    """E = sum over pairs i<j of A[t_i, t_j] exp(-r / 0.8 Å) fc(r) + per-species shift.

    ForceModel interface: ``cutoff`` (Å), ``config``, ``forward(batch) ->
    {"energy": (n_frames,) eV, "forces": (n_atoms, 3) eV/Å, "atomic_energies"}``
    with ``create_graph`` while training.  ``delay`` (s per training step) and
    ``interrupt_at`` (raise KeyboardInterrupt at that training step) are test
    hooks outside ``config``.
    """

    def __init__(self, cutoff: float = 3.0, seed: int = 0, gain: float = 1.0):
        super().__init__()
        self.cutoff = float(cutoff)
        self.config = {"class": "PairModel", "cutoff": self.cutoff, "seed": seed, "gain": gain}
        table = torch.full((119,), 0, dtype=torch.long)
        table[list(SPECIES)] = torch.arange(len(SPECIES))
        self.register_buffer("type_of", table)
        self.register_buffer("species_shift", torch.zeros(119))
        generator = torch.Generator().manual_seed(seed)
        self.coupling = nn.Parameter(torch.rand(len(SPECIES), len(SPECIES), generator=generator))
        self.gain = gain
        self.delay, self.interrupt_at, self.interrupt_eval_at, self.steps, self.evals = 0.0, None, None, 0, 0

    def forward(self, batch, compute_forces: bool = True):
        if self.training:
            self.steps += 1
            if self.interrupt_at is not None and self.steps == self.interrupt_at:
                raise KeyboardInterrupt
            time.sleep(self.delay)
        else:
            self.evals += 1
            if self.interrupt_eval_at is not None and self.evals == self.interrupt_eval_at:
                raise KeyboardInterrupt
        positions = batch.positions.detach().requires_grad_(True)
        batch = dataclasses.replace(batch, positions=positions)
        pairs, shifts = batch.neighbors(self.cutoff)
        r = batch.edge_vectors(pairs, shifts).norm(dim=1)
        kind = self.type_of[batch.numbers]
        sym = 0.5 * (self.coupling + self.coupling.T) * self.gain
        pair = sym[kind[pairs[:, 0]], kind[pairs[:, 1]]] * torch.exp(-r / 0.8)
        pair = pair * 0.5 * (torch.cos(math.pi * r / self.cutoff) + 1.0)
        atomic = torch.zeros_like(r[:0].new_zeros(batch.n_atoms)).index_add(0, pairs[:, 0], 0.5 * pair)
        atomic = atomic + self.species_shift[batch.numbers]
        energy = torch.zeros(batch.n_frames, dtype=r.dtype).index_add(0, batch.frame_index, atomic)
        out = {"energy": energy, "atomic_energies": atomic}
        if compute_forces:
            (grad,) = torch.autograd.grad(energy.sum(), positions, create_graph=self.training)
            out["forces"] = -grad
        return out


def standin_save(model, path):
    torch.save({"config": model.config, "state": model.state_dict()}, path)


def standin_load(path, map_location="cpu"):
    payload = torch.load(path, map_location=map_location, weights_only=True)
    config = {k: v for k, v in payload["config"].items() if k != "class"}
    model = PairModel(**config)
    model.to(payload["state"]["coupling"].dtype)
    model.load_state_dict(payload["state"])
    return model.to(map_location)


def standin_fit(model, frames):
    """Mean energy per atom as the shift of every species (deterministic, from the given frames)."""
    if frames.energy is not None:
        model.species_shift.fill_(float(frames.energy.mean() / frames.n_atoms))


def install_standin_io(patch=None) -> None:
    """Route training's model I/O to the stand-in (``patch``: a pytest MonkeyPatch, or None for a script)."""
    for name, func in (
        ("save_model", standin_save),
        ("load_model", standin_load),
        ("fit_species_statistics", standin_fit),
    ):
        if patch is None:
            setattr(_model_io, name, func)
        else:
            patch.setattr(_model_io, name, func)


def make_frames(n_frames: int = 30, n_atoms: int = 16, seed: int = 7, energy: bool = True) -> FrameSet:
    """Random periodic frames labelled by a PairModel with other couplings (forces ~1 eV/Å)."""
    rng = np.random.default_rng(seed)
    box = 7.0
    positions = rng.uniform(0, box, size=(n_frames, n_atoms, 3))
    numbers = np.array([SPECIES[i % len(SPECIES)] for i in range(n_atoms)])
    frames = FrameSet(positions, np.zeros_like(positions), numbers, cell=np.eye(3) * box)
    truth = PairModel(seed=123, gain=3.0).double().eval()
    from scalepool.models import AtomsBatch

    out = truth(AtomsBatch.from_frameset(frames, dtype=torch.float64))
    forces = out["forces"].detach().numpy().reshape(n_frames, n_atoms, 3)
    return FrameSet(
        positions,
        forces,
        numbers,
        cell=np.eye(3) * box,
        energy=out["energy"].detach().numpy() - 2.0 if energy else None,
        meta={"test": "pairs"},
    )


def run(out, frames, model=None, **kwargs):
    options = dict(
        epochs=EPOCHS,
        batch_size=2,
        lr=0.05,
        split_fractions=FRACTIONS,
        checkpoint_every=2,
        seed=3,
        progress=False,
        patience=None,
    )
    options.update(kwargs)
    return train(model or PairModel(seed=0), frames, out, **options)




def randomised_float64(model: nn.Module, energy_scale: float = 10.0) -> nn.Module:
    """``model`` in float64 eval mode with its zero-initialised weight matrices drawn from
    N(0, 0.3) (seed the global generator first) and ``energy_scale`` eV per unit of raw output
    (a trained model's order of magnitude): an untrained model whose every term is exercised."""
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2 and not bool(p.any()):
                p.normal_(0.0, 0.3)
        for module in model.modules():
            if hasattr(module, "species_scale"):
                module.species_scale.fill_(energy_scale)
    return model
