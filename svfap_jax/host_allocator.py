"""Host memory allocator settings for the process that runs JAX steps on the CPU.

XLA:CPU allocates the temporaries of each execution of a compiled program with the C allocator and
frees them when the execution ends; most of them live in one block whose size is the program's
peak scratch memory (about 2.3 GB for a svfap_base fine-tuning step at batch 4, fp32). glibc serves
every block above its mmap threshold (at most 32 MiB) with a fresh `mmap` and unmaps it on `free`,
so each step touches 2.3 GB of new pages again: ~600,000 minor page faults and 1.3-2.8 s of
kernel time per step on the 2-core machine of BENCHMARKS.md. Keeping freed memory in the heap (no
`mmap` for large blocks, no trimming of the heap's top) lets the next step reuse the same pages:
the fine-tuning step goes from 12.2-13.3 s to 8.5-9.3 s, the pretraining step (batch 8) from
7.3-8.0 s to 5.2-5.3 s (BENCHMARKS.md, "the host allocator keeps freed memory"). The cost is that
the process keeps its peak host memory until it exits, as a caching allocator does; a JAX process
on CPU returns to that peak every step anyway.

`retain_freed_memory()` sets this with glibc's `mallopt(3)` (M_MMAP_MAX = 0, M_TRIM_THRESHOLD =
-1); `python -m svfap_jax` calls it (through `cli.apply_process_settings`) before any command runs,
and a script that drives svfap_jax's training functions itself should call that first too. Set
SVFAP_HOST_ALLOCATOR=default to leave the C allocator as it is (e.g. to compare, or when another
allocator is preloaded); `retain` (or unset) applies the setting; any other value is an error.

Limit: glibc's per-thread arenas hold at most 64 MiB per heap, so a larger block allocated on a
thread other than the main one is still mapped afresh each time. The train loops dispatch their
steps from the main thread, where the scratch block lives (measured: ~100 faults per pretraining
step instead of ~485,000).
"""
from __future__ import annotations

import ctypes
import os
import sys

ENV = "SVFAP_HOST_ALLOCATOR"
# mallopt(3) parameter numbers, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def glibc() -> ctypes.CDLL | None:
  """The process's C library when it is glibc (the only one with these mallopt settings), else None."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version  # pylint: disable=pointless-statement; glibc only
    return libc
  except (OSError, AttributeError):
    return None


def retain_freed_memory() -> bool:
  """Makes glibc keep freed memory for reuse instead of returning it to the kernel.

  Applies to allocations made after the call. Returns True when the settings were applied; False,
  changing nothing, on a C library other than glibc (macOS, musl), when a different allocator
  (jemalloc, tcmalloc, mimalloc) was preloaded, or when SVFAP_HOST_ALLOCATOR=default.

  Raises:
    ValueError: SVFAP_HOST_ALLOCATOR is set to something other than `default` or `retain`.
  """
  choice = os.environ.get(ENV, "").strip().lower()
  if choice not in ("", "default", "retain"):
    raise ValueError(f"{ENV}={os.environ[ENV]!r}: use 'default' (glibc's own settings) or "
                     "'retain' (keep freed memory for reuse, the default when unset)")
  if choice == "default":
    return False
  if any(name in os.environ.get("LD_PRELOAD", "") for name in ("jemalloc", "tcmalloc", "mimalloc")):
    return False
  libc = glibc()
  if libc is None:
    return False
  mallopt = libc.mallopt
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  # mallopt returns 1 on success. -1 for M_TRIM_THRESHOLD disables trimming (mallopt(3)).
  return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
