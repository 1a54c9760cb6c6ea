r"""Evaluates a trained R2AC run: sampled (primary) and greedy returns over seeds.

  python -m experiments.evaluate_r2ac --workdir=runs/r2ac_rtrl_... \
      [--seeds=5] [--episodes=1000] [--actions=sampled,greedy] [--call=N]

Sampled actions (drawn from the policy, as the agent acts) are the number
that measures learning: a near-uniform policy can look good under greedy
(argmax) actions while it still acts at chance. Greedy is a second row.

Loads the run's config.json and its latest checkpoint (or --call), runs
--episodes episodes per seed for each of --seeds seeds with the agent's
`act` and prints mean ± std of the episode return (std of the per-seed
means, and over all episodes). Also writes evaluation.json into the run
folder.

Anakin runs (experiments/r2ac_anakin.py) are evaluated on their JAX
environment in one jitted loop (`evaluation.evaluate_policy`); Sebulba runs
(experiments/r2ac_sebulba.py) on their envpool environment, stepped from the
host (`evaluation.evaluate_envpool_policy`). --call is the Anakin call
number or the Sebulba update number of the checkpoint.
"""

import json
import os
import sys

from absl import app, flags

from rtrl_jax.rl import evaluation
from rtrl_jax import experiment

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "A run folder of experiments/r2ac_anakin.py or "
    "experiments/r2ac_sebulba.py.", required=True)
_SEEDS = flags.DEFINE_integer("seeds", 5, "Number of evaluation seeds.",
                              lower_bound=1)
_EPISODES = flags.DEFINE_integer("episodes", 1000, "Episodes per seed.",
                                 lower_bound=1)
_ACTIONS = flags.DEFINE_list("actions", ["sampled", "greedy"],
                             "sampled (the primary number) and/or greedy "
                             "(argmax).")
_CALL = flags.DEFINE_integer(
    "call", None, "Checkpoint to load: Anakin call or Sebulba update "
    "(default: the latest).")


def main(argv):
  experiment.cli.start_main(argv)
  actions = list(dict.fromkeys(_ACTIONS.value))     # once each, in order
  unknown = sorted(set(actions) - {"greedy", "sampled"})
  if unknown or not actions:
    sys.exit(f"error: --actions: {f'unknown {unknown}' if unknown else 'none'}"
             "; use greedy and/or sampled")
  try:
    sebulba_run = evaluation.is_sebulba_run(
        evaluation.load_run_config(_WORKDIR.value))
    if sebulba_run:
      config, agent, suite, state, metadata = evaluation.restore_sebulba_run(
          _WORKDIR.value, _CALL.value)
      params, update = state.params, int(state.update)
      env = f"{suite.name} {dict(config.env.kwargs)}"
    else:
      config, train, runner, metadata = evaluation.restore_run(
          _WORKDIR.value, _CALL.value)
      params, update = runner.params, int(runner.update)
      env = f"{config.env.name} {dict(config.env.kwargs)}"
  except (FileNotFoundError, ValueError, ImportError) as error:
    sys.exit(f"error: {str(error).splitlines()[0]}")
  checkpoint = (f"update {update}" if sebulba_run else
                f"call {metadata.get('call')} (update {update})")
  print(f"{_WORKDIR.value}: checkpoint of {checkpoint}, {env}, "
        f"{config.gradient}", flush=True)
  summaries = []
  for action_kind in actions:
    options = dict(seeds=range(_SEEDS.value), episodes_per_seed=_EPISODES.value,
                   greedy=action_kind == "greedy")
    summaries.append(
        evaluation.evaluate_envpool_policy(agent, suite, params, **options)
        if sebulba_run else
        evaluation.evaluate_policy(train.agent, train.env, params, **options))
  print(evaluation.format_table(summaries))
  results = {
      **({} if sebulba_run else {"call": metadata.get("call")}),
      "update": update,
      **{("greedy" if s.greedy else "sampled"): {
          "mean": s.mean, "std_over_seeds": s.std_over_seeds,
          "std_over_episodes": s.std_over_episodes,
          "seeds": s.returns.shape[0], "episodes_per_seed": s.returns.shape[1]}
         for s in summaries}}
  path = os.path.join(_WORKDIR.value, "evaluation.json")
  with open(path, "w") as f:
    json.dump(results, f, indent=2)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main, flags_parser=experiment.cli.parse_flags)
