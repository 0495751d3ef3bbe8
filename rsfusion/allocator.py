"""Keep freed memory for reuse: glibc malloc settings for CPU prediction, evaluation and training.

PyTorch's CPU tensors come from glibc ``malloc``. By default glibc serves large blocks (above a
threshold that it raises on its own up to 32 MiB) with a fresh ``mmap`` and gives them back with
``munmap`` when they are freed, so every batch's activations land on new pages that the kernel
must fault in and zero again. On this project's 2-core machine a MoBaNet-Lite0 fp32 batch of
eight 256^2 windows took 0.55-0.76 s with 1.2-2.0 million minor page faults per 24 batches, and
0.42-0.44 s with 132 once freed memory is kept (bf16: 0.28-0.30 s, then 0.24-0.26 s).

:func:`keep_freed_memory` does with ``mallopt`` what preloading jemalloc or tcmalloc does in
Intel's PyTorch CPU performance guide: blocks up to 1 GiB come from the heap, and the heap is
not trimmed, so the pages of one batch serve the next. The price is that the process keeps its
peak heap until it exits, which a prediction or training run does anyway (the peak itself is
unchanged: 1.77 GiB in both cases above). Blocks above 64 MiB that a worker thread allocates
still get fresh maps (glibc caps the heaps of thread arenas at 64 MiB); most of a forward pass
allocates on the calling thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

#: mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
_PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")


def keep_freed_memory(mmap_threshold: int = 1 << 30) -> bool:
    """Serve blocks up to ``mmap_threshold`` bytes from a heap that is never trimmed.

    Leaves glibc alone, and returns False, where the user chose otherwise: a ``MALLOC_*_``
    tuning variable or a ``glibc.malloc`` tunable is set, or ``LD_PRELOAD`` brings jemalloc,
    tcmalloc or mimalloc. Also False where there is no glibc (macOS, Windows, musl). True when
    both settings took.
    """
    if any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ):
        return False
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    if any(name in os.environ.get("LD_PRELOAD", "") for name in _PRELOADED):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    trim = 2**31 - 1  # mallopt takes an int: trim only when 2 GiB lie free at the top
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim))
