"""Units and conventions, in one place.

Inside scalepool every quantity is in **Å, eV and eV/Å**; atomic numbers identify
species; cell vectors are the **rows** of a (3, 3) matrix.  Foreign units (OpenMM's
nm and kJ/mol, GROMACS files, MDAnalysis' kJ/(mol·Å) forces) are converted at the
boundary with the named constants below, never with bare literals.

The constants are derived from the exact 2019 SI values of the Avogadro constant
and the elementary charge, so they agree with OpenMM, ASE and CODATA to the last
printed digit.
"""

from __future__ import annotations

AVOGADRO = 6.02214076e23  # 1/mol, exact (SI 2019)
ELEMENTARY_CHARGE = 1.602176634e-19  # C, exact (SI 2019)
VACUUM_PERMITTIVITY = 8.8541878188e-12  # F/m, CODATA 2022

# --- lengths ---------------------------------------------------------------
NM_TO_ANGSTROM = 10.0
ANGSTROM_TO_NM = 0.1

# --- energies --------------------------------------------------------------
#: 1 kJ/mol in eV (about 0.0103643).
KJ_PER_MOL_TO_EV = 1.0e3 / (AVOGADRO * ELEMENTARY_CHARGE)
EV_TO_KJ_PER_MOL = 1.0 / KJ_PER_MOL_TO_EV
KCAL_PER_MOL_TO_EV = 4.184 * KJ_PER_MOL_TO_EV

# --- forces ----------------------------------------------------------------
#: OpenMM / GROMACS force unit kJ/(mol nm) in eV/Å (1 / 964.853...).
KJ_PER_MOL_NM_TO_EV_PER_ANGSTROM = KJ_PER_MOL_TO_EV / NM_TO_ANGSTROM
EV_PER_ANGSTROM_TO_KJ_PER_MOL_NM = 1.0 / KJ_PER_MOL_NM_TO_EV_PER_ANGSTROM
#: MDAnalysis reports forces in kJ/(mol Å).
KJ_PER_MOL_ANGSTROM_TO_EV_PER_ANGSTROM = KJ_PER_MOL_TO_EV

#: eV/Å to meV/Å, the unit of every reported force error.
EV_TO_MEV = 1.0e3

# --- electrostatics --------------------------------------------------------
#: Coulomb prefactor e^2 / (4 pi eps0) in eV Å (about 14.399645).
COULOMB_EV_ANGSTROM = ELEMENTARY_CHARGE / (4.0 * 3.141592653589793 * VACUUM_PERMITTIVITY) * 1.0e10

# --- time ------------------------------------------------------------------
PS_TO_FS = 1.0e3

# --- species of the NaCl testbed ------------------------------------------
HYDROGEN, OXYGEN, SODIUM, CHLORINE = 1, 8, 11, 17
#: Atomic numbers counted as ions for close-contact descriptors.
ION_NUMBERS = (SODIUM, CHLORINE)
#: Nearest-ion distance below which an atom is "near an ion" (Å): the paper's 0.6 nm
#: close-contact radius, which holds 2 of 3 testbed atoms (a near-ion, not a contact, subset).
CLOSE_CONTACT_CUTOFF = 6.0
#: Contact ion pair: nearest counter-ion within this distance (Å).  The first minimum of the
#: Na-Cl g(r) of the default testbed (``scalepool data info data/nacl_default.npz``: first peak
#: 2.75 Å, first minimum 3.55 Å in 0.1 Å bins over 200 ps; g < 0.1 from 3.35 to 3.65 Å).
CONTACT_PAIR_DISTANCE = 3.5

__all__ = [name for name in dir() if name.isupper()]
