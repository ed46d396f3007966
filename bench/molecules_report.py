"""The markdown report of bench/molecules_cpu.sh: its two arms side by side and the learning curve.

    python bench/molecules_report.py bench/results/molecules_qm9_cpu > README.md
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

GRAPH = [("graph_validity", "validity"), ("graph_mol_stable", "mol. stable"), ("graph_atom_stable", "atom stable"),
         ("graph_connected_validity", "connected valid"), ("graph_uniqueness", "unique"), ("graph_novelty", "novel")]
EDM = [("atom_stable", "atom stable"), ("mol_stable", "mol. stable"), ("validity", "validity"),
       ("uniqueness", "unique"), ("connected_validity", "connected valid"), ("novelty", "novel")]
GEOM = [("geom_bond_length_w1", "bond length W1 (A)"), ("geom_bond_angle_w1", "bond angle W1 (deg)")]


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def rows(path: Path) -> tuple[dict, list[dict]]:
    d = json.loads(path.read_text())
    return d["meta"], d["rows"]


def main(out: Path) -> None:
    log = (out / "session.log").read_text()
    _, g = rows(out / "graph" / "quality.json")
    curve_file = out / "graph_curve" / "quality.json"
    curve = rows(curve_file)[1] if curve_file.is_file() else None
    _, p = rows(out / "positions" / "quality.json")
    secs = re.findall(r"training seconds: ([0-9.]+)", log)
    loads = re.findall(r"loadavg ([0-9.]+ [0-9.]+ [0-9.]+)", log)
    print("# QM9 on a 2-core CPU: bonds generated with the atoms vs positions + types, one training budget\n")
    print("Command: `FMKIT_DATA_DIR=../shared/data bash bench/molecules_cpu.sh` (nothing else running; "
          f"load average at its start {loads[0] if loads else '?'}, at its end {loads[-1] if loads else '?'}; "
          "every phase's load is in session.log). EMA weights, Euler, molecule sizes drawn from the training set.\n")
    print(f"Training seconds (sum of log windows): graph arm {secs[0] if secs else '?'}, "
          f"positions arm {secs[1] if len(secs) > 1 else '?'}", end="")
    if len(secs) > 1:
        print(f" ({float(secs[1]) / float(secs[0]):.2f}x: the positions arm's steps are set from its pilot's "
              "steps/s, and its rate over the whole run differs from the pilot's)", end="")
    print(".\n")
    print("## Generated-bond protocol (the graph arm's own bonds and charges)\n")
    print("| NFE | n | " + " | ".join(h for _, h in GRAPH) + " | " + " | ".join(h for _, h in GEOM) + " |")
    print("|---" * (2 + len(GRAPH) + len(GEOM)) + "|")
    for r in g:
        print(f"| {r['nfe']} | {r['n']} | " + " | ".join(pct(r.get(k)) for k, _ in GRAPH) + " | "
              + " | ".join(f"{r[k]:.3f}" if k in r else "-" for k, _ in GEOM) + " |")
    print("\n## EDM protocol (bonds from distances) on the same samples, and the positions-only arm\n")
    print("| arm | NFE | n | " + " | ".join(h for _, h in EDM) + " |")
    print("|---" * (3 + len(EDM)) + "|")
    for name, rs in (("graph (bonds generated)", g), ("positions + types", p)):
        for r in rs:
            print(f"| {name} | {r['nfe']} | {r['n']} | " + " | ".join(pct(r.get(k)) for k, _ in EDM) + " |")
    g20 = next((r for r in g if r["nfe"] == p[0]["nfe"]), None)
    if g20 is not None:
        print(f"\nRatios at {p[0]['nfe']} NFE, graph arm / positions arm:")
        for k, h in (("validity", "EDM validity"), ("atom_stable", "EDM atom stability"),
                     ("mol_stable", "EDM molecule stability")):
            a, b = g20.get(k), p[0].get(k)
            ratio = f"{a / b:.2f}x" if a is not None and b else "n/a (0 in the baseline)"
            print(f"- {h}: {pct(a)} / {pct(b)} = {ratio}")
        print(f"- generated-bond validity of the graph arm {pct(g20.get('graph_validity'))} vs the positions arm's "
              f"best protocol (EDM validity) {pct(p[0].get('validity'))}")
    if curve is None:
        print("\n(No learning curve: graph_curve/quality.json was not written.)")
        return
    print("\n## Learning curve of the graph arm (300 samples, first NFE above, each kept checkpoint)\n")
    print("| step | train minutes | graph validity | graph mol. stable | EDM atom stable | unique |")
    print("|---|---|---|---|---|---|")
    for r in curve:
        print(f"| {r['step']} | {r['train_minutes']} | {pct(r.get('graph_validity'))} "
              f"| {pct(r.get('graph_mol_stable'))} | {pct(r.get('atom_stable'))} | {pct(r.get('graph_uniqueness'))} |")
    print("\n(train minutes: checkpoint time minus the run's start, so data loading is included.)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
