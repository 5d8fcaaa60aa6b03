"""keep_freed_memory: activation-sized tensors come from the heap, and their memory stays for the next step.

Measured in a fresh process through glibc's own accounting (mallinfo2) and the page faults the kernel counts.
"""

import json
import subprocess
import sys

import pytest

from core.training.allocator import keep_freed_memory

THREE_STEPS = """
import ctypes, json, resource, sys, torch
from core.training.allocator import keep_freed_memory

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = Mallinfo2
if sys.argv[1] == "keep":
    assert keep_freed_memory()


def one_step() -> tuple[int, int]:
    # a forward pass's saved activations (16 of 7 MB) alive together, freed when its backward is done
    mapped_before, faults_before = mallinfo2().hblkhd, resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    saved = [torch.ones(7 * 1024 * 1024 // 4) for _ in range(16)]
    mapped = mallinfo2().hblkhd - mapped_before
    del saved
    return mapped, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before

mapped, _ = one_step()
one_step()
print(json.dumps(dict(mapped_first_step=mapped, heap_after_free=mallinfo2().arena, faults_third_step=one_step()[1])))
"""
MB = 1024 * 1024
PAGES_OF_A_STEP = 16 * 7 * MB // 4096


def three_steps(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", THREE_STEPS, mode], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator thresholds exist on Linux only")
def test_freed_activations_are_kept_and_reused_without_page_faults():
    usual = three_steps("usual")
    assert usual["mapped_first_step"] >= 16 * 7 * MB  # glibc maps each block this size alone, unmaps it when freed
    kept = three_steps("keep")
    assert kept["mapped_first_step"] == 0
    assert kept["heap_after_free"] >= 16 * 7 * MB
    assert kept["faults_third_step"] < PAGES_OF_A_STEP // 8  # later steps reuse the first one's pages


def test_it_reports_whether_it_could_set_the_thresholds():
    assert keep_freed_memory() is sys.platform.startswith("linux")
