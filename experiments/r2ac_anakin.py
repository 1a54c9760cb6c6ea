r"""R2AC with the Anakin system: act and learn in one jitted program on JAX envs.

  python -m experiments.r2ac_anakin \
      --config=experiments/configs/r2ac.py[:tiny|minigrid|cartpole] \
      --config.gradient=tbptt --workdir=runs/r2ac_tbptt [--resume]

One "call" is `config.updates_per_call` learner updates in one jitted
program (rtrl_jax/anakin.py); the loop (rtrl_jax/experiment) logs after every
call, runs a greedy evaluation every `eval.every_calls` calls and saves the
whole RunnerState (parameters, optimizer state, environment states, core
states with their RTRL sensitivities, RNG key, update counter) every
`run.checkpoint_every_calls`, so that `--resume` continues bit-exactly.

The run folder gets config.json, metrics.jsonl/.csv and TensorBoard events
(x-axis: calls; `train/frames` is the number of environment frames),
checkpoints/, and at the end results.json and return_vs_frames.png.
SIGTERM saves a checkpoint and exits 0. Exit status 1: a bad config or flag
(one line naming the key) or a non-finite loss (naming the call).
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import optax
from absl import app, flags, logging
from ml_collections import config_flags

from experiments.configs import r2ac as r2ac_configs
from rtrl_jax import anakin
from rtrl_jax import evaluation
from rtrl_jax import experiment

_CONFIG = config_flags.DEFINE_config_file(
    "config", "experiments/configs/r2ac.py",
    "A config file, optionally with ':name' (default, tiny, minigrid, "
    "cartpole).", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run folder (default runs/r2ac_<gradient>_<time>).")
_RESUME = flags.DEFINE_bool(
    "resume", False, "Continue from the latest checkpoint in --workdir.")

RETURN_PLOT = "return_vs_frames.png"


def learning_rate(config, update):
  """The learning rate of update `update` (linear decay to 0 if annealed)."""
  opt = config.optimizer
  if not opt.anneal_lr:
    return jnp.asarray(opt.learning_rate)
  return optax.linear_schedule(opt.learning_rate, 0.0,
                               config.total_updates)(update)


def make_train_step(config, train):
  """runner -> (runner, metrics): one call of `train.update` plus scalars.

  Adds frames (environment steps so far, all environments), the mean return
  and length of the episodes that ended in this call (NaN if none did) and
  the learning rate of the last update.
  """
  frames_per_update = anakin.frames_per_update(config)

  @jax.jit
  def summarize(metrics):
    episodes = metrics["episodes"]
    mean = lambda total: jnp.where(episodes > 0,
                                   total / jnp.maximum(episodes, 1), jnp.nan)
    return {**metrics,
            "frames": metrics["update"].astype(jnp.float32) * frames_per_update,
            "episode_return_mean": mean(metrics["episode_return_sum"]),
            "episode_length_mean": mean(metrics["episode_length_sum"]),
            "learning_rate": learning_rate(config, metrics["update"] - 1)}

  def train_step(runner):
    runner, metrics = train.update(runner)
    return runner, summarize(metrics)

  return train_step


def make_greedy_evaluation(config, train):
  """runner -> {"eval/greedy_return": ...}; its own keys, not the runner's."""
  episode_returns = evaluation.make_episode_returns(
      train.agent, train.env, config.eval.episodes, greedy=True,
      reward_clip=config.loss.reward_clip)
  eval_key = jax.random.PRNGKey(config.seed + 1)

  def evaluate(runner):
    key = jax.random.fold_in(eval_key, runner.update)
    returns, lengths = episode_returns(runner.params, key)
    return {"eval/greedy_return": jnp.mean(returns),
            "eval/greedy_length": jnp.mean(lengths)}

  return evaluate


def plot_return_vs_frames(workdir, path, title=""):
  """Training and greedy-evaluation returns vs environment frames, as a PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = experiment.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  frames_at = {row["step"]: row["train/frames"] for row in rows
               if "train/frames" in row}
  frames_at.setdefault(0, 0.0)
  train = [(row["train/frames"], row["train/episode_return_mean"])
           for row in rows if "train/episode_return_mean" in row]
  greedy = [(frames_at[row["step"]], row["eval/greedy_return"])
            for row in rows if "eval/greedy_return" in row
            and row["step"] in frames_at]
  figure, axes = plt.subplots(figsize=(7, 4.2))
  for points, label, style in ((train, "training episodes (sampled)", "-"),
                               (greedy, "greedy evaluation", "o-")):
    if points:
      axes.plot(*zip(*points), style, label=label, markersize=3)
  axes.set_xlabel("environment frames")
  axes.set_ylabel("episode return")
  axes.set_title(title, fontsize=9)
  axes.grid(alpha=0.3)
  axes.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=100)
  plt.close(figure)


def describe(config):
  env = config.env.name + "".join(
      f" {k}={v}" for k, v in sorted(config.env.kwargs.items()))
  return (f"R2AC {config.network.core}-{config.network.hidden_size} "
          f"{config.gradient.upper()} (M={config.unroll_length}) on {env}")


def run(config, workdir, resume):
  """Trains; returns the results dict (also written to results.json)."""
  r2ac_configs.check(config)
  checkpointer, resume_step = experiment.prepare_workdir(
      workdir, config, resume, max_to_keep=config.run.max_checkpoints)
  try:
    train = anakin.make_train(config)
  except (TypeError, ValueError) as error:
    checkpointer.close()
    raise experiment.ConfigError(str(error).splitlines()[0]) from error
  runner = train.init(jax.random.PRNGKey(config.seed))
  if resume_step is not None:
    runner, _ = checkpointer.restore(runner, resume_step)
    print(f"resumed {workdir} from call {resume_step} (update "
          f"{int(runner.update)})", flush=True)
  logger = experiment.RunLogger(workdir, config, resume_step=resume_step,
                                use_wandb=config.run.wandb)
  num_calls = config.total_updates // config.updates_per_call
  frames_per_call = anakin.frames_per_update(config) * config.updates_per_call
  print(f"{describe(config)}: {num_calls} calls of {config.updates_per_call} "
        f"updates, {frames_per_call} frames each; logs in {workdir}",
        flush=True)
  started = time.time()
  try:
    runner, result = experiment.train_loop(
        runner, make_train_step(config, train), start_step=resume_step or 0,
        num_steps=num_calls, logger=logger, checkpointer=checkpointer,
        log_every=1, eval_every=config.eval.every_calls,
        checkpoint_every=config.run.checkpoint_every_calls,
        evaluate=make_greedy_evaluation(config, train),
        loss_key="loss/total", progress_metric="eval/greedy_return",
        progress=config.run.progress,
        progress_train_metrics=("episode_return_mean",),
        progress_unit="frame", progress_unit_scale=frames_per_call,
        checkpoint_metadata=lambda step, runner: {
            "call": step, "update": int(runner.update)})
  finally:
    logger.close()
    checkpointer.close()
  if result.status == "preempted":
    return {"status": "preempted", "call": result.step}
  rows = experiment.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  last_train = [row for row in rows if "train/frames" in row][-1]
  results = {"status": result.status, "call": result.step,
             "updates": int(runner.update), "frames": last_train["train/frames"],
             "train/episode_return_mean":
                 last_train["train/episode_return_mean"],
             "seconds_this_session": round(time.time() - started, 1),
             **result.eval_metrics}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  plot_path = os.path.join(workdir, RETURN_PLOT)
  plot_return_vs_frames(workdir, plot_path, describe(config))
  results["plot"] = plot_path
  return results


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join(
      "runs", f"r2ac_{config.gradient}_{time.strftime('%Y%m%d_%H%M%S')}")
  try:
    results = run(config, workdir, _RESUME.value)
  except (experiment.ConfigError, experiment.NonFiniteLossError) as error:
    sys.exit(f"error: {error}")
  print(json.dumps(results))
  if results["status"] != "preempted":
    print(f"plot: {results['plot']}\n"
          f"logs: {os.path.join(workdir, 'metrics.csv')}, "
          f"{os.path.join(workdir, 'metrics.jsonl')}, TensorBoard: "
          f"tensorboard --logdir {os.path.join(workdir, 'tensorboard')}")


if __name__ == "__main__":
  app.run(main, flags_parser=experiment.cli.parse_flags)
