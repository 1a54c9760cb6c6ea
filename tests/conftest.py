"""Test-session settings.

XLA:CPU spends most of this suite's time compiling small programs. The flags
below skip LLVM optimisation and the fusion emitters: compiles get several
times faster, results are the same math (float rounding may differ in the
last bits, which every tolerance here allows). Set before JAX is imported;
subprocesses inherit them.
"""

import importlib.metadata
import os


def _fast_compile_flags():
  flags = "--xla_backend_optimization_level=0"
  # XLA aborts on unknown flags, and jaxlib 0.11 no longer has this one (the
  # tests also run there: launch/accelerator_benchmarks.sh's machines).
  major, minor = (int(v) for v in
                  importlib.metadata.version("jaxlib").split(".")[:2])
  if (major, minor) < (0, 11):
    flags += " --xla_cpu_use_fusion_emitters=false"
  return flags


_FAST_COMPILE = _fast_compile_flags()
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                           + _FAST_COMPILE).strip()
