"""Force models: backbones (PaiNN, SchNet), branches (short, long-range), batches."""

from ._batch import AtomsBatch

__all__ = ["AtomsBatch"]
