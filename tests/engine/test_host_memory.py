"""On Linux (glibc) CPU work keeps tensors' memory in the process's heap: an activation-sized block (here
24 MiB) comes from the heap, reused when freed, where glibc's defaults give it a fresh ``mmap`` that the
kernel faults in and zeroes page by page, and unmaps again when it is freed (``fmkit sample`` spent as much
time in the kernel as computing: bench/results/sample_route.md)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch

BLOCK = """
import ctypes, sys, torch
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    from fmkit.engine.host_memory import keep_freed_memory
    assert keep_freed_memory() and keep_freed_memory()  # once, then the same answer
before = libc.mallinfo2().hblkhd
x = torch.empty(6 * 2**20)  # 24 MiB
print((libc.mallinfo2().hblkhd - before) >> 20)  # MiB of it in mmap'd blocks
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc"
                    or tuple(map(int, platform.libc_ver()[1].split(".")[:2])) < (2, 33), reason="glibc >= 2.33")
def test_an_activation_sized_block_comes_from_the_heap_not_a_fresh_mapping():
    def mapped_mib(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", BLOCK, mode], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    assert mapped_mib("default") >= 24  # glibc's defaults: a fresh mapping, faulted in page by page
    assert mapped_mib("keep") == 0


def test_cpu_settings_take_the_allocator_settings_too(monkeypatch):
    import fmkit.engine.setup as setup

    called = []
    monkeypatch.setattr(setup, "keep_freed_memory", lambda: called.append(1) or True)
    threads = torch.get_num_threads()
    assert setup.set_cpu_threads(setup.TrainerOptions(device="cpu", cpu_threads=threads)) == threads
    assert called
