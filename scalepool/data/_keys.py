"""Field names shared by the dataset file, FrameSet and the prediction cache.

Each name is the key of one array in the ``.npz`` contract (README, "Dataset file"); the
comment gives its shape and unit.  Other code imports these names instead of
spelling the strings, so a rename happens here once.
"""

POSITIONS = "positions"  # (F, N, 3) Å
FORCES = "forces"  # (F, N, 3) eV/Å, total reference force
CELL = "cell"  # (F, 3, 3) Å, rows are cell vectors
NUMBERS = "numbers"  # (N,) atomic numbers
ENERGY = "energy"  # (F,) eV, optional
META = "meta"  # () JSON string: generator, parameters, versions, seed
STRESS = "stress"  # (F, 3, 3) eV/Å^3, optional, periodic frames only

# Ragged layout (frames differ in atoms): positions (T, 3), forces (T, 3), numbers (T,)
# concatenated over frames; cell (F, 3, 3) with zero rows on open axes.
N_ATOMS = "n_atoms"  # (F,) int, atoms of each frame; its presence marks the ragged layout
PBC = "pbc"  # (F, 3) bool, periodic axes of each frame
FORCE_PART_PREFIX = "forces_"  # forces_<part>: (F, N, 3) eV/Å, optional decomposition

# Force parts of the NaCl testbed (OpenMM force groups).
FORCES_BONDED = "forces_bonded"  # bonds, angles (zero for rigid water)
FORCES_DIRECT = "forces_direct"  # real-space Coulomb + Lennard-Jones
FORCES_RECIPROCAL = "forces_reciprocal"  # PME reciprocal space

# Prediction cache (written by ``scalepool predict``).
FORCES_REF = "forces_ref"  # (F, N, 3) eV/Å, reference forces
SPLIT = "split"  # (F,) int, 0 train / 1 val / 2 test
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
