"""On Linux (glibc) CPU work keeps freed tensors' memory in the process: a forward's worth of activations
allocated and freed again and again costs no page faults, where glibc's defaults hand the heap's top back to
the OS after each round and the kernel faults in and zeroes every page again (``fmkit sample`` spent as much
time in the kernel as computing)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch

CHURN = """
import resource, sys, torch
from fmkit.engine.host_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory() and keep_freed_memory()  # once, then the same answer
def rounds():
    for _ in range(20):  # a forward's activations: six of 4 MiB alive at once, then all freed
        hold = [torch.empty(2**20).fill_(1.0) for _ in range(6)]
        del hold
rounds()  # the heap grows to hold one round
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc's mallopt")
def test_freed_activations_are_reused_without_page_faults():
    def faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    default, kept = faults("default"), faults("keep")
    assert default > 20 * 6 * 1024 // 2, default  # glibc's defaults: most rounds fault their 24 MiB in again
    assert kept < 2000, (kept, default)


def test_cpu_settings_take_the_allocator_settings_too(monkeypatch):
    import fmkit.engine.setup as setup

    called = []
    monkeypatch.setattr(setup, "keep_freed_memory", lambda: called.append(1) or True)
    threads = torch.get_num_threads()
    setup.set_cpu_threads(setup.TrainerOptions(device="cpu"))
    assert called and torch.get_num_threads() == threads
