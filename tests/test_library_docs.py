"""Every Python block of docs/library.md runs, in order, as written, in a process where no plugin is
loaded (FMKIT_PLUGINS=none): the library route needs the core alone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "library.md"


def test_every_block_of_docs_library_md_runs_with_the_core_alone(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) >= 5
    script = "\n\n".join(blocks) + ("\n\nimport sys\nloaded = sorted(m for m in sys.modules if m.startswith('fmkit_'))\n"
                                    "assert not loaded, loaded\nprint('blocks ran:', %d)\n" % len(blocks))
    (tmp_path / "doc.py").write_text(script)
    env = dict(os.environ, FMKIT_PLUGINS="none", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "doc.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"blocks ran: {len(blocks)}" in r.stdout
