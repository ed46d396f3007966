"""Element vocabulary and the EDM bond-length tables (QM9: H, C, N, O, F).

Bond lengths in picometres as used by EDM's ``qm9/bond_analyze.py`` (Hoogeboom et al. 2022,
"Equivariant Diffusion for Molecule Generation in 3D"), restricted to the QM9 elements.
"""

from __future__ import annotations

import numpy as np

#: class index -> element symbol (the order EDM uses for QM9 with hydrogens)
ELEMENTS: tuple[str, ...] = ("H", "C", "N", "O", "F")
INDEX: dict[str, int] = {e: i for i, e in enumerate(ELEMENTS)}
ATOMIC_NUMBERS: tuple[int, ...] = (1, 6, 7, 8, 9)
#: element symbols by atomic number (index 0 unused), to read XYZ atom lines that give ``Z x y z``
PERIODIC: tuple[str, ...] = ("",) + tuple(
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm Yb "
    "Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No Lr "
    "Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og".split()
)
#: standard atomic weights (g/mol), for an optional mass-weighted centre
MASSES: tuple[float, ...] = (1.008, 12.011, 14.007, 15.999, 18.998)
#: valence an atom needs to be "stable" under the EDM protocol
VALENCE: tuple[int, ...] = (1, 4, 3, 2, 1)

#: RDKit perception (metrics' table 2): a pair is bonded below this factor times the sum of RDKit's
#: covalent radii (xyz2mol's rule). Its default 1.3 bonds the 1,3 carbons of QM9's strained rings,
#: 1.8-2.0 A apart; docs/molecules.md gives the share of QM9 perceived valid by factor
COV_FACTOR = 1.15

#: EDM margins (pm) added to the single/double/triple reference lengths
MARGINS_PM: tuple[int, int, int] = (10, 5, 3)

# Reference lengths in pm (EDM bonds1 / bonds2 / bonds3); a missing pair means no such bond.
_SINGLE = {
    ("H", "H"): 74, ("H", "C"): 109, ("H", "N"): 101, ("H", "O"): 96, ("H", "F"): 92,
    ("C", "C"): 154, ("C", "N"): 147, ("C", "O"): 143, ("C", "F"): 135,
    ("N", "N"): 145, ("N", "O"): 140, ("N", "F"): 136,
    ("O", "O"): 148, ("O", "F"): 142,
    ("F", "F"): 142,
}
_DOUBLE = {("C", "C"): 134, ("C", "N"): 129, ("C", "O"): 120, ("N", "N"): 125, ("N", "O"): 121, ("O", "O"): 121}
_TRIPLE = {("C", "C"): 120, ("C", "N"): 116, ("C", "O"): 113, ("N", "N"): 110}


def _table(pairs: dict[tuple[str, str], int]) -> np.ndarray:
    """Symmetric [K, K] table in pm; 0 where the bond does not exist."""
    k = len(ELEMENTS)
    t = np.zeros((k, k), dtype=np.float64)
    for (a, b), v in pairs.items():
        t[INDEX[a], INDEX[b]] = t[INDEX[b], INDEX[a]] = v
    return t


BOND1_PM = _table(_SINGLE)
BOND2_PM = _table(_DOUBLE)
BOND3_PM = _table(_TRIPLE)
