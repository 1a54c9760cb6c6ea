r"""R2AC with the Anakin system: act and learn in one jitted program on JAX envs.

  python -m experiments.r2ac_anakin \
      --config=experiments/configs/r2ac.py[:tiny|minigrid|cartpole] \
      --config.gradient=tbptt --workdir=runs/r2ac_tbptt [--resume]

One "call" is `config.updates_per_call` learner updates in one jitted
program (rtrl_jax/rl/anakin.py); the loop (rtrl_jax/experiment) logs after every
call, runs a greedy evaluation every `eval.every` calls and saves the
whole RunnerState (parameters, optimizer state, environment states, core
states with their RTRL sensitivities, RNG key, update counter) every
`run.checkpoint_every`, so that `--resume` continues bit-exactly. A
`--resume` may change the cadence and raise `total_updates` (the learning
rate's linear decay then reaches 0 at the new total: the run prints the
rate it rises to).

The run folder gets config.json, metrics.jsonl/.csv and TensorBoard events
(x-axis: calls; `train/frames` is the number of environment frames),
checkpoints/, and at the end results.json and return_vs_frames.png.
SIGTERM saves a checkpoint and exits 0. Exit status 1: a bad config or flag
(one line naming the key) or a non-finite loss (naming the call).
"""

import json
import sys

from absl import app, flags

from experiments.configs import r2ac as r2ac_configs
from rtrl_jax.experiment.r2ac_training import run
from rtrl_jax.experiment.r2ac_training import where_to_look
from rtrl_jax import experiment

_CONFIG = experiment.cli.define_config_flag(
    "experiments/configs/r2ac.py",
    "A config file, optionally with ':name' (default, tiny, minigrid, "
    "cartpole).",
    accept_new_keys=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run folder (default runs/r2ac_<gradient>_<time>).")
_RESUME = flags.DEFINE_bool(
    "resume", False, "Continue from the latest checkpoint in --workdir.")

def main(argv):
  experiment.cli.start_main(argv)
  config = _CONFIG.value
  workdir = experiment.cli.run_workdir(
      _WORKDIR.value, f"r2ac_{config.gradient}", _RESUME.value)
  try:
    r2ac_configs.check(config)
    results = run(config, workdir, _RESUME.value)
  except (experiment.ConfigError, experiment.NonFiniteLossError) as error:
    sys.exit(f"error: {error}")
  print(json.dumps(experiment.json_safe(results)))
  if results["status"] == "preempted":
    print(f"{workdir}: stopped at call {results['call']}; the same command "
          "with --resume continues it", file=sys.stderr)
  else:
    print(where_to_look(workdir, results["plot"]))


if __name__ == "__main__":
  app.run(main, flags_parser=experiment.cli.parse_flags)
