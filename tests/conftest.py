"""Test-session settings.

XLA:CPU spends most of this suite's time compiling small programs. The flags
below skip LLVM optimisation and the fusion emitters: compiles get several
times faster, results are the same math (float rounding may differ in the
last bits, which every tolerance here allows). Set before JAX is imported;
subprocesses inherit them.
"""

import os

_FAST_COMPILE = ("--xla_backend_optimization_level=0 "
                 "--xla_cpu_use_fusion_emitters=false")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                           + _FAST_COMPILE).strip()
