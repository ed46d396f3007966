"""docs/errors.md's hand-written tables (damaged runs, locks, signals and bounds; full disks, hostile and
damaged files, divergence, early Ctrl-C) list every failure case the tests drive, and every test file
the page cites exists (a renamed test file must not leave the page pointing at nothing)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "errors.md"

#: a phrase of each case's message, as the page shows it, and the test file that drives the case
CASES = [
    ("another fmkit process is training this run", "tests/engine/test_run_directory_access.py"),
    ("cannot write to the run's checkpoints/ folder", "tests/engine/test_run_directory_access.py"),
    ("note: skipping checkpoint", "tests/engine/test_checkpoint_recovery.py"),
    ("every checkpoint under RUN/checkpoints is damaged", "tests/engine/test_checkpoint_recovery.py"),
    ("cannot read the checkpoint file", "tests/engine/test_checkpoint_recovery.py"),
    ("during the evaluation at step N", "tests/app/test_stop_signals.py"),
    ("the signal is held until the imports end", "tests/app/test_stop_signals.py"),
    ("samples hold NaN/Inf", "tests/app/test_sample_failures.py"),
    ("metric 'w2' failed", "tests/app/test_sample_failures.py"),
    ("is out of range: this run's data has classes", "tests/app/test_sample_classes.py"),
    ("needs a conditional run", "tests/app/test_sample_classes.py"),
    ("contradicts --per-class", "tests/app/test_sample_classes.py"),
    ("ran out of memory while sampling", None),  # documented; no test drives it (CUDA out of memory in `sample`)
    ("appears twice in one mapping", "tests/app/test_recipe_validation.py"),
    ("which the data does not have", "tests/app/test_recipe_validation.py"),
    ("cov must be positive definite", "tests/app/test_recipe_validation.py"),
    ("through YAML aliases", "tests/app/test_recipe_validation.py"),
    ("the loss diverged at step N", "tests/engine/test_divergence.py"),
    ("cannot write the checkpoint of step N: no space left on the device", "tests/engine/test_full_disk.py"),
    ("cannot write the samples of step N", "tests/engine/test_full_disk.py"),
    ("metrics.csv was deleted or replaced while training ran", "tests/engine/test_damaged_metrics_csv.py"),
    ("cannot write the run's metrics.csv", "tests/engine/test_damaged_metrics_csv.py"),
    ("damaged row(s) of metrics.csv", "tests/engine/test_damaged_metrics_csv.py"),
    ("does not declare what its log-likelihood is", "tests/app/test_evaluate_likelihood.py"),
    ("re-ordered x1 but not its 'cond'", "tests/app/test_plugin_author_mistakes.py"),
    ("is beyond 10000 Å", "plugins/molecules/tests/test_qm9_files.py"),
    ("holds more data than its header declares", "plugins/image/tests/test_mnist_files.py"),
    ("is too short", "plugins/audio/tests/test_audio_files.py"),
    ("whose names leave its folder", "plugins/audio/tests/test_audio_files.py"),
]


@pytest.mark.parametrize("phrase, test_file", CASES, ids=[c[0] for c in CASES])
def test_the_case_is_listed_in_docs_errors_md(phrase, test_file):
    assert phrase in DOC.read_text(), f"docs/errors.md lacks the case {phrase!r} ({test_file} drives it)"
    assert test_file is None or (ROOT / test_file).is_file(), test_file


def test_every_test_file_docs_errors_md_cites_exists():
    cited = set(re.findall(r"`((?:tests|plugins/\w+/tests)/[\w/]+\.py)`", DOC.read_text()))
    assert len(cited) >= 10, cited
    missing = sorted(p for p in cited if not (ROOT / p).is_file())
    assert not missing, f"docs/errors.md cites test files that do not exist: {missing}"
