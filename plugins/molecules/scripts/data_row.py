"""The "data" row: the molecule metrics of real QM9 molecules (a split of the data itself).

    FMKIT_DATA_DIR=/work/shared/data python plugins/molecules/scripts/data_row.py --split test

Prints both metric tables as Markdown and writes them as JSON with ``--json PATH``. Novelty is
measured against the training split's SMILES (so the test split's novelty is the share of test
molecules whose graph does not occur in training).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fmkit_molecules import qm9
from fmkit_molecules.data import MoleculeDataset, build_qm9
from fmkit_molecules.elements import COV_FACTOR
from fmkit_molecules.metrics import MoleculeMetrics, evaluate_molecules
from fmkit_molecules.samples import unpad

TABLE1 = ["atom_stable", "mol_stable", "validity", "uniqueness", "valid_unique", "novelty"]
(TABLE2,) = MoleculeMetrics.tables.values()  # what `fmkit evaluate` prints as table 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="test", choices=["train", "valid", "test", "all"])
    ap.add_argument("--limit", type=int, default=None, help="first N molecules of the split")
    ap.add_argument("--root", default=None, help="data root (default $FMKIT_DATA_DIR)")
    ap.add_argument("--json", default=None, help="also write the metrics here")
    ap.add_argument("--rdkit-cov-factor", type=float, default=COV_FACTOR,
                    help=f"table 2's connectivity factor (default {COV_FACTOR}; docs/molecules.md sweeps it)")
    args = ap.parse_args()

    t0 = time.perf_counter()
    ds = build_qm9(split=args.split, root=args.root, limit=args.limit)
    batch = ds.collate([ds[i] for i in range(len(ds))])
    t1 = time.perf_counter()
    # a dataset's own SMILES are its novelty reference (the data a model trained on); here the
    # reference is the training split, whichever split is scored (of the molecules loaded above)
    ref = ds if args.split == "train" and args.limit is None else MoleculeDataset(
        ds.packed, qm9.split_indices(ds.packed.ids, "train"), source=ds.source,
        smiles_cache=qm9.smiles_cache_name(Path(ds.source), "train"))
    train = ref.novelty_smiles()
    t2 = time.perf_counter()
    res = evaluate_molecules(unpad(batch), train, rdkit_cov_factor=args.rdkit_cov_factor)
    t3 = time.perf_counter()
    print(f"source: {ds.source}  split: {args.split}  molecules: {len(ds)}  "
          f"rdkit_cov_factor: {args.rdkit_cov_factor}")
    print(f"time: load {t1 - t0:.1f}s, training SMILES {t2 - t1:.1f}s, metrics {t3 - t2:.1f}s\n")
    for cols in (TABLE1, TABLE2):
        print("| " + " | ".join(["rows"] + cols) + " |")
        print("|" + "---|" * (len(cols) + 1))
        print("| " + " | ".join([f"QM9 {args.split} (data)"] + [f"{100 * res[c]:.2f}%" for c in cols]) + " |\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"split": args.split, "n": len(ds), "source": ds.source, **res}, f, indent=2)


if __name__ == "__main__":
    main()
