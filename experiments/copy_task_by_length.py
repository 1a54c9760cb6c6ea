r"""Test-set sequence accuracy of finished copy-task runs, per pattern length.

  python -m experiments.copy_task_by_length --runs=runs/copy_cpu_bptt,...

Restores each run's latest checkpoint and prints a markdown table: one row
per run, one column per pattern length L (the copy dependency spans L steps).
"""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from rtrl_jax import copy_task
from rtrl_jax import experiment

_RUNS = flags.DEFINE_list("runs", None, "Run folders.", required=True)


def accuracy_by_length(workdir):
  """{L: test sequence accuracy over the test patterns of length L}."""
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(json.load(f))
  checkpointer = experiment.Checkpointer(os.path.join(workdir, "checkpoints"))
  state, _ = checkpointer.restore(copy_task.init_train_state(config))
  checkpointer.close()
  _, test = copy_task.evaluation_sets(config.data.seed, config.data.valid_size,
                                      config.data.test_size,
                                      config.data.max_length)
  cell = copy_task.make_cell(config.model)

  @jax.jit
  def predictions(params):
    rnn_state = cell.initial_state(params["cell"], test.mask.shape[1],
                                   sensitivities=False)
    outputs, _ = copy_task.bptt(cell, params["cell"], rnn_state, test.inputs,
                                jnp.zeros(test.mask.shape, jnp.bool_))
    logits = outputs @ params["head"]["w"] + params["head"]["b"]
    return jnp.all((jnp.argmax(logits, -1) == test.targets) | ~test.mask, 0)

  right = np.asarray(predictions(state.params))
  lengths = np.asarray(test.lengths)
  return {int(n): float(right[lengths == n].mean())
          for n in range(1, config.data.max_length + 1)}


def main(argv):
  del argv
  tables = {workdir: accuracy_by_length(workdir) for workdir in _RUNS.value}
  label = lambda w: copy_task.describe_training(
      json.load(open(os.path.join(w, "config.json")))["train"])
  lengths = sorted(next(iter(tables.values())))
  print("| run | " + " | ".join(f"L={n}" for n in lengths) + " |")
  print("|---|" + "---|" * len(lengths))
  for workdir, table in tables.items():
    print(f"| {label(workdir)} | "
          + " | ".join(f"{100 * table[n]:.0f}" for n in lengths) + " |")


if __name__ == "__main__":
  app.run(main, flags_parser=experiment.cli.parse_flags)
