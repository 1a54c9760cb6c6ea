"""Experiment scripts: run from the repository root as `python -m experiments.<name>`.

A training script run that way answers SIGTERM and Ctrl-C from its very
start: while it imports JAX and the rest (seconds, before its main() calls
`rtrl_jax.experiment.cli.start_main`, which installs the full handling of
`rtrl_jax.experiment.preemption`), a signal prints the line a preempted run
prints, {"status": "preempted", ...}, and exits 0 (what launch/slurm.sbatch
requeues on), instead of a KeyboardInterrupt traceback or exit 143.
"""

import json
import os
import signal
import sys

# Scripts whose main() calls start_main (which replaces these handlers).
_TRAINING_SCRIPTS = ("experiments.copy_task", "experiments.r2ac_anakin",
                     "experiments.r2ac_sebulba")


def _preempted_while_importing(signum, frame):
  del frame
  sys.stdout.write("\n" + json.dumps({
      "status": "preempted", "signal": signal.Signals(signum).name,
      "note": "during start-up, with nothing to save"}) + "\n")
  sys.stdout.flush()
  os._exit(0)  # pylint: disable=protected-access


def _started_as_training_script():
  argv = getattr(sys, "orig_argv", [])
  return any(argv[i] == "-m" and argv[i + 1] in _TRAINING_SCRIPTS
             for i in range(len(argv) - 1))


if _started_as_training_script():
  for _signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(_signum, _preempted_while_importing)
