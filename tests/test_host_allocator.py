"""host_allocator: freed host memory is reused without new page faults; the opt-out works.

Each case runs in a fresh interpreter because the setting is process-wide. Page faults are counted
with getrusage: touching a fresh 256 MiB block costs 65,536 minor faults of 4 KiB pages, touching
reused heap memory almost none.
"""
import os
import subprocess
import sys

import pytest

from svfap_jax import host_allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROGRAM = """
import ctypes, resource
from svfap_jax import host_allocator
applied = host_allocator.retain_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
n = 256 << 20
def touch():
  p = libc.malloc(n)
  ctypes.memset(p, 1, n)
  libc.free(p)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _huge_pages_always() -> bool:
  try:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
      return "[always]" in f.read()
  except OSError:
    return False


pytestmark = pytest.mark.skipif(host_allocator.glibc() is None,
                                reason="mallopt settings exist on glibc only")


def _second_touch(**env) -> tuple[bool, int]:
  out = subprocess.run([sys.executable, "-c", _PROGRAM], cwd=ROOT, check=True,
                       capture_output=True, text=True,
                       env={**os.environ, "LD_PRELOAD": "", **env}).stdout.split()
  return out[0] == "True", int(out[1])


def test_retained_memory_is_reused_without_page_faults():
  applied, faults = _second_touch()
  assert applied
  assert faults < 1000, faults  # 65,536 if the block were mapped afresh


def test_environment_opt_out_keeps_glibc_defaults_which_map_large_blocks_afresh():
  applied, faults = _second_touch(SVFAP_HOST_ALLOCATOR="default")
  assert not applied
  # With transparent huge pages always on, a fresh mapping faults once per 2 MiB: few faults.
  if not _huge_pages_always():
    assert faults > 60000, faults


def test_unknown_environment_value_is_an_error():
  proc = subprocess.run([sys.executable, "-c", _PROGRAM], cwd=ROOT, capture_output=True,
                        text=True, env={**os.environ, "SVFAP_HOST_ALLOCATOR": "off"})
  assert proc.returncode != 0
  assert "SVFAP_HOST_ALLOCATOR='off'" in proc.stderr and "'default'" in proc.stderr
