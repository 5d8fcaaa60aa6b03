"""Keep freed memory in the process for the next tensor, instead of handing it back to the system.

glibc serves a block of 128 KB or more with its own `mmap` and returns it with `munmap` when freed, so on
the CPU every activation of a training step (a 1,100 x 1,536 fp32 tensor is 6.7 MB) arrives as fresh pages
that the kernel must fault in and zero: 70,000-100,000 page faults a step for the default model on chat
data, and an element-wise multiply that takes 0.2 ms on warm memory took 1.4-2.8 ms in the step. With the
thresholds raised, a freed block stays in the heap and the next tensor of that size reuses it: about
10,000 faults a step (bench/allocator.py measures it). The process's peak memory does not change, since
the step's peak is the same tensors either way; the memory is kept until the process ends.

Only glibc has these knobs (Linux); elsewhere this does nothing. Training runs in a process of its own (a
job, or the CLI), so the app's other processes keep the usual behaviour.
"""

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers, from glibc's malloc.h
_LARGEST_HEAP_BLOCK = 32 * 1024 * 1024  # glibc refuses a larger mmap threshold on 64-bit systems
_TRIM_ONLY_ABOVE = 2**31 - 1  # the largest value mallopt takes (an int): 2 GB free at the heap's top


def keep_freed_memory() -> bool:
    """Raise glibc's thresholds for this process; True when they were set (Linux with glibc)."""
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _LARGEST_HEAP_BLOCK)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_ONLY_ABOVE))


def _glibc_mallopt():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt
