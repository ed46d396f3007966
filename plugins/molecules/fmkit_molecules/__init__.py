"""fmkit-molecules: 3-D molecule generation with equivariant flow matching (QM9).

Components are registered with fmkit through :mod:`fmkit_molecules.plugin` (entry point group
``fmkit``); importing this package imports nothing heavy.
"""

__version__ = "0.1.0"
