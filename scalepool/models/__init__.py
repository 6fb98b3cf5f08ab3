"""Force models: backbones (PaiNN, SchNet), branches (short, long-range), batches.

Every model is a :class:`ForceModel`: ``model(batch)`` returns
``{"energy": (n_frames,) eV, "forces": (n_atoms, 3) eV/Å,
"atomic_energies": (n_atoms,) eV}`` with forces from autograd.
"""

from . import _keys as keys
from ._allocator import keep_freed_memory
from ._base import (
    AGGREGATIONS,
    MODEL_REGISTRY,
    N_SPECIES,
    Features,
    ForceModel,
    MessagePassingBackbone,
    build_model,
    check_batch,
    fit_species_statistics,
    load_model,
    register_model,
    save_model,
)
from ._batch import AtomsBatch
from ._branches import BACKBONES, LONG_CUTOFF, SHORT_CUTOFF, LongRangeBranch, ShortRangeBranch, build_branch
from ._edge_ops import (
    gather_dot_features,
    gather_dot_vector,
    gather_mul_scatter,
    gather_pair_dot,
    outer_scatter,
)
from ._electrostatics import TESTBED_CHARGES, LatentChargeEwald
from ._muse import MuSE, build_muse_branch
from ._painn import PaiNN
from ._pooling import SoftAssignment, SoftCoarseGraining
from ._radial import bessel_basis, cosine_cutoff, gaussian_basis, polynomial_cutoff
from ._scatter import HAS_TORCH_SCATTER, scatter_sum
from ._schnet import SchNet

__all__ = [
    "AGGREGATIONS",
    "BACKBONES",
    "HAS_TORCH_SCATTER",
    "LONG_CUTOFF",
    "MODEL_REGISTRY",
    "MessagePassingBackbone",
    "N_SPECIES",
    "SHORT_CUTOFF",
    "TESTBED_CHARGES",
    "AtomsBatch",
    "Features",
    "ForceModel",
    "LatentChargeEwald",
    "LongRangeBranch",
    "MuSE",
    "PaiNN",
    "SchNet",
    "ShortRangeBranch",
    "SoftAssignment",
    "SoftCoarseGraining",
    "bessel_basis",
    "build_branch",
    "build_model",
    "build_muse_branch",
    "check_batch",
    "cosine_cutoff",
    "fit_species_statistics",
    "gather_dot_features",
    "gather_dot_vector",
    "gather_mul_scatter",
    "gather_pair_dot",
    "gaussian_basis",
    "keep_freed_memory",
    "keys",
    "load_model",
    "outer_scatter",
    "polynomial_cutoff",
    "register_model",
    "save_model",
    "scatter_sum",
]
