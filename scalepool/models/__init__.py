"""Force models: backbones (PaiNN, SchNet; MACE and SO3krates through their packages), branches (the :data:`BRANCHES` catalogue),
MuSE pooling, the deployable mixed model, batches and model files.

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
    EdgeBackbone,
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
from ._branches import BACKBONES, LONG_CUTOFF, SHORT_CUTOFF, LongRangeBranch, ShortRangeBranch
from ._catalogue import (
    BRANCHES,
    Branch,
    branch_name,
    build_branch,
    build_long_branch,
    build_muse_branch,
    build_short_branch,
)
from ._edge_ops import (
    gather_dot_features,
    gather_dot_vector,
    gather_mul_scatter,
    gather_pair_dot,
    outer_scatter,
)
from ._electrostatics import TESTBED_CHARGES, LatentChargeEwald, SwitchedCoulombPotential, quintic_switch
from ._mace import MACEBackbone
from ._mixed import DEFAULT_SPECIES, ROUTER_RADII, MixedForceModel, router_mlp, smooth_router_features
from ._muse import MuSE
from ._painn import PaiNN
from ._pooling import SoftAssignment, SoftCoarseGraining
from ._radial import bessel_basis, cosine_cutoff, gaussian_basis, polynomial_cutoff
from ._scatter import HAS_TORCH_SCATTER, scatter_sum
from ._schnet import SchNet
from ._so3krates import SO3kratesBackbone

__all__ = [
    "AGGREGATIONS",
    "BACKBONES",
    "BRANCHES",
    "DEFAULT_SPECIES",
    "ROUTER_RADII",
    "Branch",
    "MixedForceModel",
    "branch_name",
    "build_long_branch",
    "build_short_branch",
    "router_mlp",
    "smooth_router_features",
    "HAS_TORCH_SCATTER",
    "LONG_CUTOFF",
    "MODEL_REGISTRY",
    "EdgeBackbone",
    "MessagePassingBackbone",
    "N_SPECIES",
    "SHORT_CUTOFF",
    "TESTBED_CHARGES",
    "AtomsBatch",
    "Features",
    "ForceModel",
    "LatentChargeEwald",
    "LongRangeBranch",
    "MACEBackbone",
    "SO3kratesBackbone",
    "MuSE",
    "PaiNN",
    "SchNet",
    "ShortRangeBranch",
    "SoftAssignment",
    "SwitchedCoulombPotential",
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
    "quintic_switch",
    "register_model",
    "save_model",
    "scatter_sum",
]
