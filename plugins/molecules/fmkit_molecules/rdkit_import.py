"""RDKit on first use: training (data, source, coupling, models) needs no RDKit; metrics and molecule
files do. A machine that only trains (e.g. a GPU host whose image lacks RDKit) can then run the recipe,
and evaluation elsewhere or later."""

from __future__ import annotations

from types import ModuleType

from fmkit.plugin import DependencyError


def load_chemistry(what: str = "molecule metrics and files") -> ModuleType:
    """``fmkit_molecules.chemistry`` (which imports RDKit), or a DependencyError that says what to install."""
    try:
        from fmkit_molecules import chemistry
    except ImportError as exc:
        raise DependencyError(f"RDKit is needed for {what} and does not import here ({exc})",
                              where="fmkit-molecules (metric: molecules; writers: sdf, mol_grid)",
                              fix="pip install rdkit (a dependency of fmkit-molecules); or leave these "
                                  "out of eval.metrics / eval.writers (the xyz writer needs no RDKit)") from exc
    return chemistry
