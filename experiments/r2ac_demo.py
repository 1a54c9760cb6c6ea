r"""RTRL's promise in one picture: RTRL(M) and TBPTT(M) side by side on a memory span > M.

  python -m experiments.r2ac_demo            # = make demo (about 2 min on 2 cores)
  python -m experiments.r2ac_demo --memory_length=50 --frames=600000

Trains the same R2AC agent (experiments/configs/r2ac.py's default: eLSTM-64,
M = 10, the CPU preset's optimizer) twice on gymnax MemoryChain(L): a cue at
step 0, reward +1 for naming it at step L, -1 for the wrong answer, so a
policy that does not remember scores 0 in expectation. Once with RTRL
(gradients reach back through every step of the episode, carried by the
sensitivities) and once with TBPTT(M) (gradients cut at each unroll of M
steps, so for L > M they never connect the answer to the cue). Same seeds,
environments, updates and frames; all seeds of a system in one jitted
program.

Writes <workdir>/demo.png (sampled training return vs frames, mean and
min..max over seeds, chance level drawn) and results.json, and prints each
system's final return with *sampled* actions over --eval_episodes episodes
per seed (greedy as a second number).
"""

import json
import os
import sys
import time

from absl import app, flags
import numpy as np

from rtrl_jax.experiment import r2ac_training
from experiments.configs import r2ac as r2ac_configs
from rtrl_jax import experiment
from rtrl_jax.experiment.run_logger import write_json

_MEMORY_LENGTH = flags.DEFINE_integer(
    "memory_length", 30, "L: steps between the cue and the answer.",
    lower_bound=1)
_UNROLL = flags.DEFINE_integer("unroll_length", 10, "M of both systems.",
                               lower_bound=1)
_SEEDS = flags.DEFINE_integer("seeds", 3, "Seeds per system.", lower_bound=1)
_FRAMES = flags.DEFINE_integer(
    "frames", 320_000, "Environment frames per seed (rounded to whole "
    "calls of 25 updates).", lower_bound=1)
_EVAL_EPISODES = flags.DEFINE_integer(
    "eval_episodes", 1000, "Final evaluation episodes per seed.",
    lower_bound=1)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output folder (default runs/r2ac_demo_<time>).")

SYSTEMS = (("rtrl", "RTRL", "tab:blue"), ("tbptt", "TBPTT", "tab:orange"))
UPDATES_PER_CALL = 25


def demo_config(gradient, memory_length, unroll_length, frames):
  """The default config on MemoryChain(memory_length), ~`frames` frames."""
  config = r2ac_configs.default()
  config.env.kwargs.memory_length = memory_length
  config.gradient = gradient
  config.unroll_length = unroll_length
  config.updates_per_call = UPDATES_PER_CALL
  frames_per_call = config.num_envs * unroll_length * UPDATES_PER_CALL
  config.total_updates = max(1, round(frames / frames_per_call)) * (
      UPDATES_PER_CALL)
  r2ac_configs.check(config)
  return config


def plot(results, path, memory_length, unroll_length, seeds):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  figure, axes = plt.subplots(figsize=(7.5, 4.5))
  for gradient, label, color in SYSTEMS:
    out = results[gradient]
    curve = np.asarray(out.train_return)     # [calls, seeds]
    axes.plot(out.frames, np.nanmean(curve, 1), color=color,
              label=f"{label}({unroll_length}): final sampled "
                    f"{out.sampled.mean():.2f}")
    axes.fill_between(out.frames, np.nanmin(curve, 1), np.nanmax(curve, 1),
                      color=color, alpha=0.2)
  axes.axhline(0.0, color="gray", linestyle="--", linewidth=1,
               label="chance (no memory)")
  axes.set_ylim(-1.05, 1.05)
  axes.set_xlabel("environment frames (per seed)")
  axes.set_ylabel("training episode return (sampled actions)")
  axes.set_title(
      f"R2AC eLSTM on MemoryChain(L={memory_length}), M={unroll_length}: "
      f"mean and min..max over {seeds} seeds", fontsize=10)
  axes.grid(alpha=0.3)
  axes.legend(loc="lower right", fontsize=9)
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def main(argv):
  experiment.cli.start_main(argv)
  workdir = _WORKDIR.value or os.path.join(
      "runs", "r2ac_demo_" + time.strftime("%Y%m%d_%H%M%S"))
  seeds = list(range(_SEEDS.value))
  results = {}
  try:
    for gradient, label, _ in SYSTEMS:
      config = demo_config(gradient, _MEMORY_LENGTH.value, _UNROLL.value,
                           _FRAMES.value)
      calls = config.total_updates // config.updates_per_call
      print(f"{r2ac_training.describe(config)}, {len(seeds)} seeds: "
            f"{calls} calls", flush=True)
      started = time.time()

      def progress(call, frames, returns, calls=calls, started=started):
        if call == calls or call % max(1, calls // 4) == 0:
          print(f"  {label}: {frames:,.0f} frames, training return "
                f"{np.nanmean(returns):+.2f} ({time.time() - started:.0f} s)",
                flush=True)

      results[gradient] = r2ac_training.train_seeds(
          config, seeds, _EVAL_EPISODES.value, greedy_episodes=100,
          on_call=progress)
  except (experiment.ConfigError, experiment.NonFiniteLossError) as error:
    sys.exit(f"error: {error}")
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "demo.png")
  plot(results, path, _MEMORY_LENGTH.value, _UNROLL.value, len(seeds))
  summary = {
      "memory_length": _MEMORY_LENGTH.value,
      "unroll_length": _UNROLL.value, "seeds": seeds,
      "eval_episodes_per_seed": _EVAL_EPISODES.value,
      **{gradient: {
          "frames_per_seed": float(out.frames[-1]),
          "sampled_return_per_seed": out.sampled.mean(1).tolist(),
          "sampled_return": float(out.sampled.mean()),
          "greedy_return": float(out.greedy.mean())}
         for gradient, out in results.items()}}
  write_json(os.path.join(workdir, "results.json"), summary, indent=2)
  for gradient, label, _ in SYSTEMS:
    out = summary[gradient]
    print(f"{label}({_UNROLL.value}) on MemoryChain(L={_MEMORY_LENGTH.value}): "
          f"sampled return {out['sampled_return']:+.3f} over "
          f"{_EVAL_EPISODES.value} episodes x {len(seeds)} seeds (per seed "
          f"{np.round(out['sampled_return_per_seed'], 2).tolist()}); greedy "
          f"{out['greedy_return']:+.3f}; chance 0")
  print(f"plot: {path}")
  print(json.dumps({"workdir": workdir}))


if __name__ == "__main__":
  app.run(main, flags_parser=experiment.cli.parse_flags)
