r"""Test-set sequence accuracy of finished copy-task runs, per pattern length.

  python -m experiments.copy_task_by_length --runs=runs/copy_cpu_bptt,...

Restores each run's latest checkpoint and prints a markdown table: one row
per run, one column per pattern length L (the copy dependency spans L steps).
"""

import os
import sys

import jax
import numpy as np
from absl import app, flags

from rtrl_jax.tasks import from_config
from rtrl_jax.rl import evaluation
from rtrl_jax import experiment

_RUNS = flags.DEFINE_list("runs", None, "Run folders.", required=True)


def accuracy_by_length(workdir):
  """{L: test sequence accuracy over the test patterns of length L}."""
  config = evaluation.load_run_config(workdir)
  checkpointer = experiment.Checkpointer(os.path.join(workdir, "checkpoints"))
  state, _ = checkpointer.restore(from_config.init_train_state(config))
  checkpointer.close()
  _, test = from_config.evaluation_sets(config)
  right = np.asarray(jax.jit(from_config.sequences_right(config))(
      state.params, test))
  lengths = np.asarray(test.lengths)
  return {int(n): float(right[lengths == n].mean())
          for n in range(1, config.data.max_length + 1)}


def main(argv):
  experiment.cli.start_main(argv, quiet_logging=False)
  for workdir in _RUNS.value:
    missing = [name for name in ("config.json", "checkpoints")
               if not os.path.exists(os.path.join(workdir, name))]
    if missing:
      sys.exit(f"error: --runs: {workdir!r} has no {' or '.join(missing)} "
               "(not a copy-task run folder)")
  tables = {workdir: accuracy_by_length(workdir) for workdir in _RUNS.value}
  lengths = sorted(set().union(*tables.values()))
  print("| run | " + " | ".join(f"L={n}" for n in lengths) + " |")
  print("|---|" + "---|" * len(lengths))
  for workdir, table in tables.items():
    label = from_config.describe_training(
        evaluation.load_run_config(workdir).train)
    print(f"| {label} | " + " | ".join(
        f"{100 * table[n]:.0f}" if n in table else "–" for n in lengths)
          + " |")


if __name__ == "__main__":
  app.run(main, flags_parser=experiment.cli.parse_flags)
