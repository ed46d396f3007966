"""Training needs no RDKit (a GPU host whose image lacks it can train the recipe), nor do XYZ files;
the metrics and the SDF/PNG writers do, and without it they stop with a DependencyError that says
what to install, after the checkpoint, the samples and the XYZ file are on disk."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, sys
    sys.modules["rdkit"] = None  # any `import rdkit...` now raises ImportError
    from fmkit.plugin import DependencyError, load_recipe
    from fmkit.testing import build_trainer, fresh_registry
    import fmkit_molecules.plugin as plugin

    xyz, run = sys.argv[1], sys.argv[2]
    reg = fresh_registry(plugin)
    recipe = load_recipe({
        "name": "no_rdkit",
        "data": {"name": "xyz_molecules", "path": xyz},
        "model": {"name": "e3nn_flow", "scalars": 8, "vectors": 2, "layers": 1, "num_basis": 4, "radial_hidden": 8},
        "path": {"name": "condot", "fields": {"atoms": {"name": "discrete", "source": "mask"}}},
        "source": {"name": "com_free_gaussian"},
        "coupling": {"name": "equivariant_ot", "iters": 1},
        "solver": {"name": "euler", "steps": 2},
        "trainer": {"steps": 4, "batch_size": 4, "device": "cpu", "progress": False, "checkpoint_every": 2,
                    "log_every": 2, "num_workers": 0},
        "eval": {"every": 0, "num_samples": 4, "batch_size": 4, "metrics": [{"name": "molecules"}],
                 "writers": [{"name": "sdf"}, {"name": "xyz"}]},
    }, registry=reg)
    tr = build_trainer(recipe, run, reg)
    out = {"error": None}
    try:
        tr.fit()  # 4 steps, then the final evaluation needs RDKit
    except DependencyError as exc:
        out = {"error": str(exc), "step": tr.step}
    print(json.dumps(out))
""")


def test_training_runs_without_rdkit_and_evaluation_says_what_is_missing(tmp_path, xyz_file):
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(xyz_file), str(run)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["step"] == 4 and "RDKit" in out["error"] and "pip install rdkit" in out["error"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000000004"
    assert (run / "samples" / "samples_step0000004.safetensors").is_file()  # saved before the metrics ran
    assert not list((run / "samples").glob("*.sdf"))
    # the metric and the SDF writer failing did not cost the XYZ file (nor any other writer)
    frames = (run / "samples" / "samples_step0000004.xyz").read_text().count("sample_")
    assert frames == 4  # one frame per sample, written without RDKit
