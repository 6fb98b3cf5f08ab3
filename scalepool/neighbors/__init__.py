"""Neighbour lists: periodic pairs and shifts, distances recomputed in torch."""

from ._neighbor_list import batched_neighbor_pairs, neighbor_pairs, pair_vectors

__all__ = ["batched_neighbor_pairs", "neighbor_pairs", "pair_vectors"]
