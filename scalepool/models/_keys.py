"""Keys of the dictionary every :class:`ForceModel` returns, each with its shape and unit."""

from ..data import keys as _data_keys

ENERGY = _data_keys.ENERGY  # (n_frames,) eV, total energy of each frame
FORCES = _data_keys.FORCES  # (n_atoms, 3) eV/Å, -dE/dx by autograd
ATOMIC_ENERGIES = "atomic_energies"  # (n_atoms,) eV, sums to ENERGY per frame
STRESS = "stress"  # (n_frames, 3, 3) eV/Å^3, (1/V) dE/d strain (ASE sign), periodic frames only
VIRIAL = "virial"  # (n_frames, 3, 3) eV, -dE/d strain = -V * stress
