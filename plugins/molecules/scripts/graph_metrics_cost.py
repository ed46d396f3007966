"""Cost of the molecule metrics on real QM9 molecules with a graph: every table on N molecules.

    FMKIT_DATA_DIR=/work/shared/data python plugins/molecules/scripts/graph_metrics_cost.py --n 1000

The "samples" are N molecules of the QM9 test split (seeded draw) whose graph (Kekule bond orders,
formal charges) RDKit perceives from their geometry (``rdDetermineBonds`` through
``chemistry.rdkit_perceived``), so that this works whether or not the dataset carries bonds. The
reference is the training split, as a metric sees it. Prints each part's wall time and the rows.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from fmkit_molecules import chemistry
from fmkit_molecules.data import build_qm9
from fmkit_molecules.geometry_metrics import geometry_profile, geometry_rows, reference_profile, strain_rows
from fmkit_molecules.graph import CHARGE_OFFSET
from fmkit_molecules.graph_metrics import assess_graph, dataset_graph, graph_rows, smiles_of_graphs
from fmkit_molecules.metrics import evaluate_molecules
from fmkit_molecules.samples import unpad, unpad_graphs


def graph_batch(graphs) -> dict[str, torch.Tensor]:  # noqa: ANN001 - MolGraph list
    n = max(len(g) for g in graphs)
    b = len(graphs)
    out = {"pos": torch.zeros(b, n, 3), "atoms": torch.zeros(b, n, dtype=torch.long),
           "charges": torch.full((b, n), CHARGE_OFFSET, dtype=torch.long),
           "bonds": torch.zeros(b, n, n, dtype=torch.long), "mask": torch.zeros(b, n, dtype=torch.bool)}
    for i, g in enumerate(graphs):
        k = len(g)
        out["pos"][i, :k] = torch.as_tensor(g.pos)
        out["atoms"][i, :k] = torch.as_tensor(g.types)
        out["charges"][i, :k] = torch.as_tensor(g.charges + CHARGE_OFFSET)
        out["bonds"][i, :k, :k] = torch.as_tensor(g.bonds)
        out["mask"][i, :k] = True
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--reference", type=int, default=2000, help="geometry reference molecules")
    ap.add_argument("--novelty-sample", type=int, default=5000,
                    help="training molecules whose graph SMILES are timed (the full set's cost is extrapolated)")
    ap.add_argument("--strain-iters", type=int, default=200)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    times: dict[str, float] = {}

    test, train = build_qm9(split="test"), build_qm9(split="train")
    idx = np.sort(np.random.default_rng(0).choice(len(test), size=args.n, replace=False))
    t = time.perf_counter()
    graphs = [g for g in (dataset_graph(test, int(i)) for i in idx) if g is not None]
    times["perceive samples (not a metric)"] = time.perf_counter() - t
    batch = graph_batch(graphs)
    print(f"{len(graphs)} of {args.n} test molecules perceived")

    t = time.perf_counter()
    edm = evaluate_molecules(unpad(batch), None, rdkit_protocol=True)
    times["tables 1-2 (EDM + RDKit perception)"] = time.perf_counter() - t
    t = time.perf_counter()
    edm_only = evaluate_molecules(unpad(batch), None, rdkit_protocol=False)
    times["table 1 alone (EDM)"] = time.perf_counter() - t

    t = time.perf_counter()
    assessed = [assess_graph(g) for g in unpad_graphs(batch)]
    rows = graph_rows(assessed)
    times["table 3 (graph protocol, no novelty)"] = time.perf_counter() - t

    t = time.perf_counter()
    sub = np.random.default_rng(1).choice(len(train), size=min(args.novelty_sample, len(train)), replace=False)
    ref_graphs = [dataset_graph(train, int(i)) for i in sub]
    times[f"novelty reference: perceive {len(sub)} training molecules"] = time.perf_counter() - t
    t = time.perf_counter()
    smiles_of_graphs((g.types, g.bonds, g.charges) for g in ref_graphs if g is not None)
    times[f"novelty reference: SMILES of {len(sub)} training graphs"] = time.perf_counter() - t

    t = time.perf_counter()
    ref = reference_profile(train, args.reference)
    times[f"table 4 reference: {args.reference} training molecules (once per dataset)"] = time.perf_counter() - t
    t = time.perf_counter()
    geo = geometry_rows(geometry_profile(g for g, a in zip(unpad_graphs(batch), assessed) if a.valid), ref)
    times["table 4 (bond length + angle W1)"] = time.perf_counter() - t

    t = time.perf_counter()
    strain = strain_rows((a.mol for a in assessed if a.valid), args.strain_iters)
    times[f"MMFF strain ({args.strain_iters} iters)"] = time.perf_counter() - t

    for k, v in times.items():
        print(f"{k:70s} {v:8.2f} s")
    res = {**edm, **rows, **geo, **strain}
    print(json.dumps({k: round(v, 4) for k, v in res.items()}, indent=1))
    print(f"training set: {len(train)} molecules; test: {len(test)}; rdkit {chemistry.Chem.rdBase.rdkitVersion}")
    del edm_only
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": len(graphs), "times_s": times, "metrics": res}, f, indent=2)


if __name__ == "__main__":
    main()
