"""Neighbour lists: periodic pairs and shifts, distances recomputed in torch.

``neighbor_pairs`` / ``batched_neighbor_pairs`` take and return numpy arrays;
``torch_neighbor_pairs`` / ``torch_batched_neighbor_pairs`` take and return
tensors on the positions' device (what models call every step)."""

from ._neighbor_list import batched_neighbor_pairs, neighbor_pairs, pair_vectors
from ._torch_list import torch_batched_neighbor_pairs, torch_neighbor_pairs

__all__ = [
    "batched_neighbor_pairs",
    "neighbor_pairs",
    "pair_vectors",
    "torch_batched_neighbor_pairs",
    "torch_neighbor_pairs",
]
