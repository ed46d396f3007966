"""fmkit hook implementations of the molecules plugin (heavy imports happen inside the hooks)."""

from __future__ import annotations

from pathlib import Path

from fmkit.plugin import hookimpl, register_recipe_folder

_HERE = Path(__file__).parent


@hookimpl
def register_datasets(register):
    from fmkit_molecules.data import QM9Options, XYZMoleculesOptions, build_qm9, build_xyz

    register("qm9", build_qm9, options=QM9Options,
             description="QM9 3-D molecules (H,C,N,O,F; EDM split; bonds + charges with bonds: true) "
                         "from $FMKIT_DATA_DIR/qm9 or a download")
    register("xyz_molecules", build_xyz, options=XYZMoleculesOptions,
             description="molecules from a local multi-frame XYZ file, split like QM9")


@hookimpl
def register_models(register):
    from fmkit_molecules.models.e3nn_flow import E3nnFlow, E3nnFlowOptions
    from fmkit_molecules.models.egnn import EGNN, EGNNOptions
    from fmkit_molecules.models.egnn_graph import EGNNGraph, EGNNGraphOptions

    register("e3nn_flow", E3nnFlow, options=E3nnFlowOptions,
             description="E(3)-equivariant tensor-product network on e3nn irreps (molecules)")
    register("egnn", EGNN, options=EGNNOptions, description="EGNN (Satorras et al. 2021) for molecules")
    register("egnn_graph", EGNNGraph, options=EGNNGraphOptions,
             description="EGNN with edge channels: positions, atom types, charges and bonds together (molecules)")


@hookimpl
def register_sources(register):
    from fmkit_molecules.source import ComFreeGaussian, ComFreeGaussianOptions

    register("com_free_gaussian", ComFreeGaussian, options=ComFreeGaussianOptions,
             description="Gaussian positions with zero centre of mass over each molecule's real atoms")


@hookimpl
def register_couplings(register):
    from fmkit_molecules.coupling import EquivariantOTCoupling, EquivariantOTOptions

    register("equivariant_ot", EquivariantOTCoupling, options=EquivariantOTOptions,
             description="Kabsch + Hungarian aligned exact minibatch OT among same-size molecules")


@hookimpl
def register_metrics(register):
    from fmkit_molecules.metrics import MoleculeMetrics, MoleculeMetricsOptions

    register("molecules", MoleculeMetrics, options=MoleculeMetricsOptions,
             description="EDM stability/validity/uniqueness/novelty + connected and RDKit validity; "
                         "for generated bonds also the generated-bond protocol and bond length/angle W1")


@hookimpl
def register_writers(register):
    from fmkit_molecules.writers import GridOptions, MoleculeGridWriter, SDFOptions, SDFWriter, XYZWriter

    register("sdf", SDFWriter, options=SDFOptions, description="one SD file of the samples (generated bonds and charges, else EDM bonds)")
    register("xyz", XYZWriter, options=SDFOptions, description="one multi-frame XYZ file of the samples")
    register("mol_grid", MoleculeGridWriter, options=GridOptions,
             description="PNG grid of 2-D depictions of valid samples")


@hookimpl
def register_recipes(register):
    register_recipe_folder(register, _HERE / "recipes")
