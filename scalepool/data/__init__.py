"""Datasets and the two file contracts: FrameSet (reference data) and PredictionCache
(branch forces), the npz schema, trajectory I/O, the NaCl testbed, descriptors."""

from . import _keys as keys
from ._descriptors import (
    close_contact_mask,
    frameset_descriptors,
    min_ion_ion_distance,
    minimum_image_distances,
    minimum_image_vectors,
    nearest_counterion_distance,
    nearest_ion_distance,
)
from ._frameset import DatasetError, FrameSet, NotAFileError, random_split, time_block_split
from ._io import SUPPORTED_READ, SUPPORTED_WRITE, companion_topology, read_frames, write_frames
from ._nacl_checkpoint import CheckpointInUse
from ._prediction_cache import PredictionCache, PredictionCacheError, split_code
from ._ragged import RaggedLayoutError
from ._rdf import contact_ion_mask, first_minimum, nearest_ion_distance_frames, radial_distribution
from ._sanity import (
    MIN_CELL_HEIGHT,
    Finding,
    PhysicsError,
    PhysicsWarning,
    cell_heights,
    check_physics,
    physics_findings,
)
from ._summary import force_statistics, format_summary, summarize

# The testbed generator needs OpenMM; load it on first use so that models,
# training and the scale layer import (and run, e.g. on a GPU node) without it.
_OPENMM_NAMES = ("build_nacl_system", "generate_nacl", "openmm_force_function", "openmm_reference_forces")
_GRAPHENE_NAMES = ("generate_graphene", "graphene_reference", "graphene_profile_path", "save_graphene")
_GRAPHENE_PROFILE_NAMES = ("binding_curves", "isolated_references")
_PEPTIDE_NAMES = ("build_peptide", "generate_peptide", "peptide_observables", "peptide_reference")


def __getattr__(name: str):
    if name in _OPENMM_NAMES:
        from . import _nacl

        return getattr(_nacl, name)
    if name in _GRAPHENE_PROFILE_NAMES:
        from . import _graphene_profile

        return getattr(_graphene_profile, name)
    if name in _GRAPHENE_NAMES:  # needs tblite
        from . import _graphene

        return getattr(_graphene, name)
    if name in _PEPTIDE_NAMES:  # needs OpenMM and PeptideBuilder
        from . import _peptide

        return getattr(_peptide, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "MIN_CELL_HEIGHT",
    "SUPPORTED_READ",
    "SUPPORTED_WRITE",
    "DatasetError",
    "Finding",
    "FrameSet",
    "NotAFileError",
    "PhysicsError",
    "PhysicsWarning",
    "PredictionCache",
    "PredictionCacheError",
    "close_contact_mask",
    "companion_topology",
    "build_nacl_system",
    "cell_heights",
    "check_physics",
    "frameset_descriptors",
    "binding_curves",
    "generate_graphene",
    "isolated_references",
    "generate_nacl",
    "generate_peptide",
    "graphene_profile_path",
    "graphene_reference",
    "save_graphene",
    "build_peptide",
    "peptide_observables",
    "peptide_reference",
    "keys",
    "min_ion_ion_distance",
    "minimum_image_distances",
    "minimum_image_vectors",
    "nearest_counterion_distance",
    "nearest_ion_distance",
    "nearest_ion_distance_frames",
    "openmm_force_function",
    "openmm_reference_forces",
    "physics_findings",
    "CheckpointInUse",
    "force_statistics",
    "format_summary",
    "summarize",
    "contact_ion_mask",
    "first_minimum",
    "radial_distribution",
    "random_split",
    "RaggedLayoutError",
    "read_frames",
    "split_code",
    "time_block_split",
    "write_frames",
]
